"""Does a pipeline use its prompt? The rectified-flow loss of the transformer on rendered scenes of
the GenEval test prompts with the right caption, another scene's caption (shifted by 7 in the list)
and the empty caption, at fixed σ. The gap between the first two is what the prompt is worth.

Usage (from the repository root): python scripts/caption_loss.py [PIPELINE_DIR] [--n 128] [--seed 0]
Default PIPELINE_DIR: the shipped alignbench/models/weights/tiny-shapes. Loss: mean over latents of
(v_θ(x_σ, σ, c) − (ε − x₀))², x_σ = (1 − σ)x₀ + σε, x₀ the VAE posterior mean scaled as in
pretraining, one noise ε per scene from torch seed ``--seed``; scene layouts from numpy seed ``--seed``.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from diffusers import FluxPipeline

from alignbench.world.prompts import geneval_splits
from alignbench.world.sample import scene_for_record
from alignbench.world.scene import WorldConfig, render


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("pipeline", nargs="?", default="alignbench/models/weights/tiny-shapes")
    ap.add_argument("--n", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    pipe = FluxPipeline.from_pretrained(args.pipeline)
    _, test = geneval_splits()
    rng, world = np.random.default_rng(args.seed), WorldConfig()
    recs = [test[i % len(test)] for i in range(args.n)]
    prompts = [r["prompt"] for r in recs]
    images = np.stack([render(scene_for_record(r, "geneval", rng, world), world) for r in recs])
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1
    with torch.no_grad():
        lat = pipe.vae.encode(x).latent_dist.mean
        lat = (lat - pipe.vae.config.shift_factor) * pipe.vae.config.scaling_factor
        n, c, h, w = lat.shape
        ids = pipe._prepare_latent_image_ids(n, h // 2, w // 2, "cpu", torch.float32)
        noise = torch.randn(lat.shape, generator=torch.Generator().manual_seed(args.seed))
        target = pipe._pack_latents(noise - lat, n, c, h, w)
        captions = {"right": prompts, "other scene's": [prompts[(i + 7) % n] for i in range(n)], "empty": [""] * n}
        for sigma in (0.9, 0.7, 0.5, 0.3):
            xt = pipe._pack_latents((1 - sigma) * lat + sigma * noise, n, c, h, w)
            losses = {}
            for name, caps in captions.items():
                pe, pooled, tids = pipe.encode_prompt(caps, None, device="cpu", max_sequence_length=20)
                pred = pipe.transformer(hidden_states=xt, timestep=torch.full((n,), sigma), guidance=None,
                                        pooled_projections=pooled, encoder_hidden_states=pe, txt_ids=tids,
                                        img_ids=ids, return_dict=False)[0]
                losses[name] = (pred - target).pow(2).mean().item()
            print(f"σ {sigma}: " + "  ".join(f"{k} caption {v:.4f}" for k, v in losses.items()))


if __name__ == "__main__":
    main()
