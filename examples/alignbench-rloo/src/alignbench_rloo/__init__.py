"""Example third-party alignbench plugin (see docs/adding_an_algorithm.md in alignbench)."""
