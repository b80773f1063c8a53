"""Score the pretraining dev probe (train-split prompts; alignbench/models/pretrain/probe.py) for a saved
pipeline, e.g. the shipped weights, as a reference point beside pretraining curves.

    python scripts/probe_pipeline.py alignbench/models/weights/tiny-shapes [--ocr-prompts 16] [--threads 1]
"""

from __future__ import annotations

import argparse
import json

import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("pipeline")
    ap.add_argument("--ocr-prompts", type=int, default=16)
    ap.add_argument("--threads", type=int, default=None)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    from diffusers import FluxPipeline

    from alignbench.models.pretrain.probe import DevProbe, ProbeConfig
    from alignbench.models.spec import quiet_hf_progress

    quiet_hf_progress()
    pipe = FluxPipeline.from_pretrained(a.pipeline)
    probe = DevProbe(ProbeConfig(every=1, ocr_prompts=a.ocr_prompts))
    summary, _ = probe.run(pipe)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
