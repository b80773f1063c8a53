"""How faithfully a backbone's VAE reconstructs ShapesWorld scenes: the ceiling on what the
transformer can draw (``alignbench vae-check``).

For scenes rendered from a task's test prompts (stream (seed, i)): x̂ = decode(mode(encode(x))).
Reports pixel MSE and PSNR (images in [0, 1]), the colour fidelity of every object (CIELAB ΔE*76
between the mean colour of its fully covered pixels in x and in x̂, and whether the nearest palette
colour is unchanged), and the task's own scorer on x and on x̂.
"""

from __future__ import annotations

import numpy as np
import torch

from ..world.palette import COLORS, nearest_color_lab, srgb_to_lab
from ..world.sample import sample_records, scene_for_record
from ..world.scene import object_mask, render


@torch.no_grad()
def vae_check(backbone, task, n: int, seed: int = 0, batch_size: int = 64) -> dict:
    """Reconstruction report for ``n`` scenes of ``task``'s test prompts.

    Returns:
        ``{"n", "mse", "psnr_db", "objects", "color_delta_e_mean", "color_delta_e_p95",
        "color_kept", "<key>_original", "<key>_reconstructed" for each reward key}``.
    """
    fmt = task.spec.format
    records = sample_records(task.prompts("test", backbone.domain), n, seed)
    scenes = [scene_for_record(r, fmt, np.random.default_rng([seed, i])) for i, r in enumerate(records)]
    originals = np.stack([render(s) for s in scenes])
    vae, pipe = backbone.pipe.vae, backbone.pipe
    recon = []
    for start in range(0, n, batch_size):
        x = torch.from_numpy(originals[start:start + batch_size]).permute(0, 3, 1, 2).float() / 127.5 - 1
        z = vae.encode(x.to(backbone.device, vae.dtype)).latent_dist.mode()
        img = pipe.image_processor.postprocess(vae.decode(z, return_dict=False)[0], output_type="pt")
        recon.append((img.float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy())
    recon_np = np.concatenate(recon)
    diff = originals.astype(np.float64) / 255 - recon_np.astype(np.float64) / 255
    mse = float(np.mean(diff**2))
    delta_e, kept = [], []
    for scene, a, b in zip(scenes, originals, recon_np, strict=True):
        for obj in scene.objects:
            m = object_mask(obj, a.shape[0], 4) > 0.99
            if m.sum() < 4:
                continue
            lab_a, lab_b = srgb_to_lab(a[m].mean(0) / 255), srgb_to_lab(b[m].mean(0) / 255)
            delta_e.append(float(np.linalg.norm(lab_a - lab_b)))
            kept.append(COLORS[int(nearest_color_lab(lab_b)[0])] == obj.color)
    reward = task.reward(backbone.domain)
    prompts = [r["prompt"] for r in records]
    s_orig = reward.score(list(originals), prompts, records)
    s_rec = reward.score(list(recon_np), prompts, records)
    out = {"n": n, "mse": mse, "psnr_db": float(10 * np.log10(1 / mse)), "objects": len(delta_e),
           "color_delta_e_mean": float(np.mean(delta_e)) if delta_e else None,
           "color_delta_e_p95": float(np.percentile(delta_e, 95)) if delta_e else None,
           "color_kept": float(np.mean(kept)) if kept else None}
    for k in reward.keys:
        out[f"{k}_original"] = float(s_orig[k].mean())
        out[f"{k}_reconstructed"] = float(s_rec[k].mean())
    out["images"] = (originals, recon_np)
    return out
