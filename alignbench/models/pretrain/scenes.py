"""The scene stream: captions from the task generators (test prompts and OCR test strings held out),
rendered batches, the per-step random streams and the cached latent pool of the flow phase."""

from __future__ import annotations

import time

import numpy as np
import torch

from ...io import atomic_write_bytes, load_checkpoint_file
from ...world.prompts import (
    OCR_TEMPLATES,
    color_attr_sample,
    color_sample,
    counting_sample,
    geneval_splits,
    ocr_record,
    ocr_splits,
    position_sample,
    random_text,
    single_object_samples,
    two_object_sample,
)
from ...world.sample import scene_for_record
from ...world.scene import LABEL_CHANNELS, LETTER_CHANNELS, WorldConfig, render, render_with_labels
from .config import CAPTION_TAGS

# ---------------------------------------------------------------------------------------- captions

_GENEVAL_MAKERS = (two_object_sample, counting_sample, color_sample, position_sample, color_attr_sample)  # CAPTION_TAGS[1:]


class CaptionSampler:
    """Draws training (format, metadata) pairs from the task generators, test prompts held out."""

    def __init__(self, ocr_fraction: float, tag_weights: dict[str, float] | None = None):
        self.ocr_fraction = ocr_fraction
        w = np.array([(tag_weights or {}).get(t, 1.0) for t in CAPTION_TAGS], dtype=np.float64)
        self.tag_p = None if np.all(w == w[0]) else w / w.sum()  # None: the original uniform draw
        _, test = geneval_splits()
        self.held_out = {r["prompt"] for r in test}
        self.single = [r for r in single_object_samples(np.random.default_rng(0)) if r["prompt"] not in self.held_out]
        _, ocr_test = ocr_splits()
        self.held_out_text = {r["text"] for r in ocr_test}

    def __call__(self, rng: np.random.Generator) -> tuple[str, dict]:
        if rng.random() < self.ocr_fraction:
            while True:
                text = random_text(rng)
                if text not in self.held_out_text:
                    return "ocr", ocr_record(text, int(rng.integers(len(OCR_TEMPLATES))))
        while True:
            k = (int(rng.integers(len(_GENEVAL_MAKERS) + 1)) if self.tag_p is None
                 else int(rng.choice(len(CAPTION_TAGS), p=self.tag_p)))
            rec = self.single[int(rng.integers(len(self.single)))] if k == 0 else _GENEVAL_MAKERS[k - 1](rng)
            if rec["prompt"] not in self.held_out:
                return "geneval", rec


def render_batch(sampler: CaptionSampler, rng: np.random.Generator, n: int,
                 world: WorldConfig, labels: bool = False, letters: bool = False):
    """``n`` (prompt, image) pairs; images float [n, 3, H, W] in [-1, 1]. With ``labels``, also the
    renderer's per-cell labels, float [n, len(LABEL_CHANNELS), H/4, W/4] in [0, 1] (same images:
    the label maps come from the same draw; with ``letters``, followed by the LETTER_CHANNELS)."""
    prompts, images, maps = [], [], []
    for _ in range(n):
        fmt, rec = sampler(rng)
        prompts.append(rec["prompt"])
        scene = scene_for_record(rec, fmt, rng, world)
        if labels:
            img, lab = render_with_labels(scene, world, grid=world.image_size // 4, letters=letters)
            maps.append(lab)
        else:
            img = render(scene, world)
        images.append(img)
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    if labels:
        return prompts, x, torch.from_numpy(np.stack(maps))
    return prompts, x



def _gen(seed: int, phase: int, step: int) -> tuple[np.random.Generator, torch.Generator]:
    rng = np.random.default_rng([seed, phase, step])
    g = torch.Generator().manual_seed(int(rng.integers(2**62)))
    return rng, g



class PoolMixin:
    """The flow phase's fixed pool of encoded scenes (a :class:`~.trainer.Pretrainer` part)."""

    def _prepare_pool(self) -> None:
        """Render ``pool_size`` scenes (stream (seed, 2, i)) and cache their VAE posterior means;
        set the VAE's shift/scaling factors from the pool statistics (first time only)."""
        if self.latents is not None:
            return
        cfg = self.cfg
        cache = self.out / "cache" / "pool.pt"
        want_labels = cfg.align_weight > 0 or cfg.object_weight > 0
        if cache.exists():
            data = load_checkpoint_file(cache)
            n_labels = len(LABEL_CHANNELS) + (len(LETTER_CHANNELS) if cfg.align_letters else 0)
            cached = data.get("labels")
            if not want_labels or (cached is not None and cached.shape[1] == n_labels):
                self.latents, self.prompts = data["latents"], data["prompts"]
                self.labels = data.get("labels")
                self.pipe.vae.register_to_config(shift_factor=data["shift"], scaling_factor=data["scale"])
                return
        t0 = time.perf_counter()
        vae = self.pipe.vae.eval()
        lat, prompts, maps = [], [], []
        chunk = 256
        with torch.no_grad():
            for start in range(0, cfg.pool_size, chunk):
                rng, _ = _gen(cfg.seed, 2, start)
                out = render_batch(self.sampler, rng, min(chunk, cfg.pool_size - start), self.world, labels=want_labels,
                                   letters=cfg.align_letters)
                p, x = out[0], out[1]
                if want_labels:
                    maps.append((out[2] * 255).round().to(torch.uint8))
                lat.append(vae.encode(x.to(self.device)).latent_dist.mean.cpu())
                prompts.extend(p)
                self.progress("encode", min(start + chunk, cfg.pool_size), cfg.pool_size, {})
        latents = torch.cat(lat)
        self.labels = torch.cat(maps) if want_labels else None
        if cfg.init_from and cfg.vae_steps == 0:  # the VAE is unchanged: keep the scaling the model learnt with
            shift, scale = self._init_vae_factors
        else:
            shift, scale = latents.mean().item(), 1.0 / latents.std().item()
        self.pipe.vae.register_to_config(shift_factor=shift, scaling_factor=scale)
        self.latents, self.prompts = (latents - shift) * scale, prompts
        self.timing["encode_seconds"] += time.perf_counter() - t0
        import io
        buf = io.BytesIO()
        torch.save({"latents": self.latents, "prompts": self.prompts, "shift": shift, "scale": scale,
                    "labels": self.labels}, buf)
        atomic_write_bytes(cache, buf.getvalue())
