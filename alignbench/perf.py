"""Switches for the engine's speed-ups that leave results unchanged (issue 19, item 4).

Each speed-up is on by default; the environment variable ``ALIGNBENCH_SPEEDUPS=off`` turns them
all off for any command (e.g. to time ``alignbench run`` as it was before them). ``alignbench bench --speedups both`` measures every algorithm
with all of them off and then on, in one run, so that their effect is a before/after pair from the
same process and machine; tests compare the results of both settings.

Speed-ups:

* ``share_nodes``: the update evaluates the velocity once per distinct start node of the trained
  edges (:func:`alignbench.sampling.plan.recompute_log_prob`): the k children of a branch point
  share x, σ and prompt, so a tree update needs 1/k of the transformer rows.
* ``cache_reference``: the KL term's reference means μ_ref (a no-grad forward of the reference
  policy per edge batch) are computed by an iteration's first inner update and reused by the
  others (:func:`alignbench.training.update.accumulate_gradients`): the reference and the rollout
  do not change within an iteration, so the values are the same bit for bit.
* ``batched_ocr``: the OCR reward runs EasyOCR's CRAFT text detector on batches of 16 images
  instead of image by image (:class:`alignbench.rewards.ocr.OcrReward`): the same readings, no
  faster on an idle 2-core CPU (measured), meant for GPUs.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from .errors import UserError

_ENV = os.environ.get("ALIGNBENCH_SPEEDUPS", "on").strip().lower()
if _ENV not in ("on", "off"):
    raise UserError(f"ALIGNBENCH_SPEEDUPS: '{_ENV}' is not allowed; allowed: on, off")

#: name → on/off; every speed-up is on unless ALIGNBENCH_SPEEDUPS=off or a caller turns it off.
SPEEDUPS: dict[str, bool] = dict.fromkeys(("share_nodes", "cache_reference", "batched_ocr"), _ENV == "on")


def enabled(name: str) -> bool:
    """Whether speed-up ``name`` is on.

    Raises:
        KeyError: unknown name (the allowed names are the keys of :data:`SPEEDUPS`).
    """
    if name not in SPEEDUPS:
        raise KeyError(f"unknown speed-up {name!r}; allowed: {', '.join(SPEEDUPS)}")
    return SPEEDUPS[name]


@contextmanager
def speedups(on: bool) -> Iterator[None]:
    """Turn every speed-up on or off inside the block (restored afterwards)."""
    saved = dict(SPEEDUPS)
    SPEEDUPS.update(dict.fromkeys(SPEEDUPS, on))
    try:
        yield
    finally:
        SPEEDUPS.update(saved)
