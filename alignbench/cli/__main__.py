"""``python -m alignbench.cli``."""

from . import main

main()
