"""Analytic transformer FLOPs (issue 19's MFU): a hand count, and the linear/convolution part checked
against torch's FlopCounterMode on tiny FLUX and SD3 configs (FlopCounterMode does not count the
fused attention kernel here, so the attention term is added by hand: 2 products of T²·d MACs)."""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from alignbench.flops import flux_forward_flops, forward_flops, sd3_forward_flops


def test_flux_hand_count():
    """d = 4 (1 head × 4), T_i = 2, T_t = 1, C_in = C_out = 4, J = 2, P = 2, one double block:
    x_embedder 2·4·4 = 32, context 1·2·4 = 8, timestep MLP 256·4 + 16 = 1040, pooled MLP 2·4 + 16 = 24,
    double block 12·16 + 12·3·16 + 2·9·4 = 840, output 2·16 + 2·4·4 = 64: 2008 MACs = 4016 FLOPs."""
    cfg = dict(num_layers=1, num_single_layers=0, attention_head_dim=4, num_attention_heads=1, in_channels=4,
               joint_attention_dim=2, pooled_projection_dim=2, guidance_embeds=False, patch_size=1)
    assert flux_forward_flops(cfg, 2, 1) == 4016


def _attention_flops(t: int, d: int) -> int:
    return 2 * (2 * t * t * d)


def test_flux_formula_matches_the_flop_counter_plus_attention():
    from diffusers import FluxTransformer2DModel

    cfg = dict(patch_size=1, in_channels=16, num_layers=2, num_single_layers=3, attention_head_dim=8,
               num_attention_heads=3, joint_attention_dim=20, pooled_projection_dim=12, guidance_embeds=True,
               axes_dims_rope=(2, 2, 4))
    model = FluxTransformer2DModel(**cfg).eval()
    ti, tt, d = 16, 7, 24
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(hidden_states=torch.randn(1, ti, 16), encoder_hidden_states=torch.randn(1, tt, 20),
              pooled_projections=torch.randn(1, 12), timestep=torch.tensor([0.5]), img_ids=torch.zeros(ti, 3),
              txt_ids=torch.zeros(tt, 3), guidance=torch.tensor([3.5]))
    attention = 5 * _attention_flops(ti + tt, d)  # 2 double + 3 single blocks
    assert flux_forward_flops(cfg, ti, tt) == counter.get_total_flops() + attention


def test_sd3_formula_matches_the_flop_counter_plus_attention():
    from diffusers import SD3Transformer2DModel

    cfg = dict(sample_size=8, patch_size=2, in_channels=4, num_layers=3, attention_head_dim=8, num_attention_heads=3,
               joint_attention_dim=20, caption_projection_dim=24, pooled_projection_dim=12, out_channels=4,
               pos_embed_max_size=8, dual_attention_layers=(0,), qk_norm="rms_norm")
    model = SD3Transformer2DModel(**cfg).eval()
    ti, tt, d = 16, 7, 24  # 8×8 latent in 2×2 patches
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(hidden_states=torch.randn(1, 4, 8, 8), encoder_hidden_states=torch.randn(1, tt, 20),
              pooled_projections=torch.randn(1, 12), timestep=torch.tensor([500.0]))
    # three joint attentions over T_i + T_t, and block 0's second (image-only) attention
    attention = 3 * _attention_flops(ti + tt, d) + _attention_flops(ti, d)
    assert sd3_forward_flops(cfg, ti, tt) == counter.get_total_flops() + attention
    assert forward_flops("sd3", cfg, ti, tt) == sd3_forward_flops(cfg, ti, tt)


def test_published_configs_give_the_known_sizes():
    """FLUX.1-dev at 512² (1,024 image + 512 text tokens): every token meets 12·d² weights in each of
    the 57 blocks (a double block's two streams each see only their own half), d = 3,072, plus the
    attention products: ≈ 21.5 TFLOP per sample and forward. SD3.5-Medium (1,024 + 333 tokens,
    d = 1,536, 24 blocks): ≈ 2.4 TFLOP."""
    from alignbench.models.random_arch import FLUX_DEV_TRANSFORMER, SD35M_TRANSFORMER

    d, t = 3072, 1536
    approx = 2 * (57 * 12 * d * d * t + 57 * 2 * t * t * d)
    flux = flux_forward_flops(FLUX_DEV_TRANSFORMER, 1024, 512)
    assert abs(flux / approx - 1) < 0.01
    sd3 = sd3_forward_flops(SD35M_TRANSFORMER, 1024, 333)
    assert 2.3e12 < sd3 < 2.6e12
