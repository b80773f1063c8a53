"""Analytic FLOPs of one transformer forward, from the transformer's config (issue 19's MFU).

FLOPs = 2 × multiply-accumulates of every matrix product (linear layers, the patch convolution,
attention's QKᵀ and A·V); normalisations, activations, RoPE and softmax are left out (they are a
fraction of a percent at these widths). Notation: d = heads × head_dim, T_i image tokens, T_t text
tokens, T = T_i + T_t, c the per-sample conditioning vector.

FLUX (``FluxTransformer2DModel``, diffusers):

* embedders: x_embedder T_i·C_in·d; context_embedder T_t·J·d; timestep (and guidance) MLP
  256·d + d² each; pooled-text MLP P·d + d²;
* double-stream block: AdaLN-Zero modulation of both streams 2·6d²; Q, K, V and output projections
  of both streams 4T·d²; GELU MLPs (4×) of both streams 8T·d²; attention 2T²·d;
* single-stream block: modulation 3d²; Q, K, V 3T·d²; MLP in 4T·d²; fused output (d + 4d → d) 5T·d²;
  attention 2T²·d;
* output: AdaLN modulation 2d²; projection T_i·d·C_out.

SD3 (``SD3Transformer2DModel``): patch embedding T_i·(C_in·p²)·d; context_embedder T_t·J·D_cap;
timestep MLP 256·d + d²; pooled MLP P·d + d²; per joint block: image modulation 6d² (9d² in
SD3.5's dual-attention blocks), context modulation 6d² (2d² in the last, context-pre-only block),
image Q, K, V, out 4T_i·d², context Q, K, V 3T_t·d² (+ T_t·d² out, except in the last block), joint
attention 2T²·d, image MLP 8T_i·d², context MLP 8T_t·d² (not in the last block), and in
dual-attention blocks a second image self-attention 4T_i·d² + 2T_i²·d; output 2d² + T_i·d·(p²·C_out).

Tested against ``torch.utils.flop_counter.FlopCounterMode`` on tiny configs of both classes.
"""

from __future__ import annotations

from typing import Any


def flux_forward_flops(cfg: dict[str, Any], image_tokens: int, text_tokens: int) -> int:
    """FLOPs of one FLUX transformer forward for one sample (module docstring).

    Args:
        cfg: ``FluxTransformer2DModel`` config (``num_layers``, ``num_single_layers``,
            ``attention_head_dim``, ``num_attention_heads``, ``in_channels``, ``joint_attention_dim``,
            ``pooled_projection_dim``, ``guidance_embeds``, ``patch_size``, ``out_channels``).
        image_tokens, text_tokens: T_i and T_t.
    """
    d = cfg["num_attention_heads"] * cfg["attention_head_dim"]
    ti, tt = image_tokens, text_tokens
    t = ti + tt
    c_in = cfg["in_channels"]
    c_out = (cfg.get("out_channels") or c_in) * cfg.get("patch_size", 1) ** 2
    macs = ti * c_in * d + tt * cfg["joint_attention_dim"] * d
    macs += (256 * d + d * d) * (2 if cfg.get("guidance_embeds") else 1)
    macs += cfg["pooled_projection_dim"] * d + d * d
    macs += cfg["num_layers"] * (12 * d * d + 12 * t * d * d + 2 * t * t * d)
    macs += cfg["num_single_layers"] * (3 * d * d + 12 * t * d * d + 2 * t * t * d)
    macs += 2 * d * d + ti * d * c_out
    return 2 * macs


def sd3_forward_flops(cfg: dict[str, Any], image_tokens: int, text_tokens: int) -> int:
    """FLOPs of one SD3 transformer forward for one sample (module docstring).

    Args:
        cfg: ``SD3Transformer2DModel`` config (``num_layers``, ``attention_head_dim``,
            ``num_attention_heads``, ``in_channels``, ``out_channels``, ``patch_size``,
            ``joint_attention_dim``, ``caption_projection_dim``, ``pooled_projection_dim``,
            ``dual_attention_layers``).
        image_tokens, text_tokens: T_i (after patching) and T_t.
    """
    d = cfg["num_attention_heads"] * cfg["attention_head_dim"]
    ti, tt = image_tokens, text_tokens
    t = ti + tt
    p2 = cfg.get("patch_size", 2) ** 2
    macs = ti * cfg["in_channels"] * p2 * d + tt * cfg["joint_attention_dim"] * cfg["caption_projection_dim"]
    macs += 256 * d + d * d + cfg["pooled_projection_dim"] * d + d * d
    dual = set(cfg.get("dual_attention_layers") or ())
    n = cfg["num_layers"]
    for i in range(n):
        last = i == n - 1
        macs += (9 if i in dual else 6) * d * d + (2 if last else 6) * d * d
        macs += 4 * ti * d * d + 3 * tt * d * d + (0 if last else tt * d * d) + 2 * t * t * d
        macs += 8 * ti * d * d + (0 if last else 8 * tt * d * d)
        if i in dual:
            macs += 4 * ti * d * d + 2 * ti * ti * d
    macs += 2 * d * d + ti * d * p2 * (cfg.get("out_channels") or cfg["in_channels"])
    return 2 * macs


def forward_flops(family: str, cfg: dict[str, Any], image_tokens: int, text_tokens: int) -> int:
    """:func:`flux_forward_flops` or :func:`sd3_forward_flops` by family.

    Raises:
        ValueError: unknown family.
    """
    if family == "flux":
        return flux_forward_flops(cfg, image_tokens, text_tokens)
    if family == "sd3":
        return sd3_forward_flops(cfg, image_tokens, text_tokens)
    raise ValueError(f"family: no FLOP formula for '{family}'; allowed: flux, sd3")


def backbone_forward_flops(backbone) -> int:
    """FLOPs of one transformer forward for one sample of a loaded backbone adapter (its config,
    its image tokens and its text length)."""
    cfg = dict(backbone.transformer.config)
    tokens = backbone.latent_shape[0]
    if backbone.family == "sd3":
        text = 77 + backbone.max_sequence_length
    else:
        text = backbone.max_sequence_length
    return forward_flops(backbone.family, cfg, tokens, text)


def matmul_peak_flops(device: str = "cuda", dtype: str = "bfloat16", n: int = 8192, repeats: int = 20) -> float:
    """Measured dense matmul throughput (FLOP/s) of ``device``: the median of ``repeats`` timed
    n×n×n products in ``dtype`` after a warm-up (the MFU denominator; reported beside it).

    Raises:
        ValueError: ``device`` is not a CUDA device.
    """
    import statistics

    import torch

    if not device.startswith("cuda"):
        raise ValueError(f"device: the matmul probe needs a CUDA device, got '{device}'")
    a = torch.randn(n, n, device=device, dtype=getattr(torch, dtype))
    b = torch.randn(n, n, device=device, dtype=getattr(torch, dtype))
    for _ in range(3):
        a @ b
    torch.cuda.synchronize(device)
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        a @ b
        end.record()
        torch.cuda.synchronize(device)
        times.append(start.elapsed_time(end) / 1000)
    return 2 * n**3 / statistics.median(times)
