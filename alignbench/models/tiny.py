"""The embedded backbone's architecture: a tiny FLUX.1 pipeline built from diffusers/transformers
classes and small configs (specs/shapes_world.md, "Embedded backbone").

Same classes as FLUX.1-dev (``FluxTransformer2DModel``, ``AutoencoderKL``, ``CLIPTextModel``,
``T5EncoderModel``, ``FlowMatchEulerDiscreteScheduler`` with FLUX's resolution-dependent shift),
only smaller, so the engine has one code path for both. Images are 64×64; the VAE downsamples 4× to
a 16×16×C latent, which FLUX packs into 8×8 = 64 tokens of 4·C channels.
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
from pydantic import Field, model_validator
from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

from ..config import StrictModel
from .tokenizer import SPECIALS, build_tokenizers, world_vocabulary


class TinyFluxConfig(StrictModel):
    """Sizes of the embedded backbone's components (every field is a plain diffusers/transformers
    config value)."""

    image_size: int = Field(64, description="image side in pixels")
    vae_channels: tuple[int, ...] = Field((16, 32, 32), description="AutoencoderKL block_out_channels; "
                                          "len-1 downsamplings")
    latent_channels: int = Field(4, ge=1, description="VAE latent channels")
    vae_layers_per_block: int = Field(1, ge=1)
    vae_norm_groups: int = Field(8, ge=1)
    text_dim: int = Field(64, ge=8, description="hidden size of both text encoders")
    text_layers: int = Field(2, ge=1)
    text_heads: int = Field(4, ge=1)
    max_text_length: int = Field(20, ge=8, description="padded prompt length in tokens")
    num_layers: int = Field(2, ge=1, description="FLUX double-stream (MM-DiT) blocks")
    num_single_layers: int = Field(4, ge=0, description="FLUX single-stream blocks")
    attention_head_dim: int = Field(16, ge=8, description="must equal sum(axes_dims_rope)")
    num_attention_heads: int = Field(8, ge=1)
    axes_dims_rope: tuple[int, int, int] = Field((4, 6, 6))
    guidance_embeds: bool = Field(False, description="FLUX.1-dev's guidance embedding; off: no teacher to "
                                  "distil guidance from")

    @model_validator(mode="after")
    def _check_sizes(self) -> TinyFluxConfig:
        if sum(self.axes_dims_rope) != self.attention_head_dim:
            raise ValueError(f"axes_dims_rope {tuple(self.axes_dims_rope)} must sum to attention_head_dim "
                             f"({self.attention_head_dim})")
        if self.text_dim % self.text_heads:
            raise ValueError(f"text_dim ({self.text_dim}) must be divisible by text_heads ({self.text_heads})")
        if any(c % self.vae_norm_groups for c in self.vae_channels):
            raise ValueError(f"vae_channels {tuple(self.vae_channels)} must be multiples of vae_norm_groups "
                             f"({self.vae_norm_groups})")
        return self


def build_tiny_pipeline(cfg: TinyFluxConfig | None = None, seed: int = 0) -> FluxPipeline:
    """A randomly initialised tiny ``FluxPipeline`` (fp32, CPU), reproducible for ``seed``.

    Raises:
        ValueError: ``attention_head_dim`` differs from ``sum(axes_dims_rope)``.
    """
    cfg = cfg or TinyFluxConfig()
    if sum(cfg.axes_dims_rope) != cfg.attention_head_dim:
        raise ValueError(f"axes_dims_rope must sum to attention_head_dim ({cfg.attention_head_dim}), "
                         f"got {cfg.axes_dims_rope}")
    vocab = world_vocabulary()
    pad, _, bos, eos = (vocab.index(s) for s in SPECIALS)
    torch.manual_seed(seed)
    n_blocks = len(cfg.vae_channels)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * n_blocks,
        up_block_types=("UpDecoderBlock2D",) * n_blocks, block_out_channels=tuple(cfg.vae_channels),
        layers_per_block=cfg.vae_layers_per_block, latent_channels=cfg.latent_channels,
        norm_num_groups=cfg.vae_norm_groups, sample_size=cfg.image_size, scaling_factor=1.0, shift_factor=0.0,
        use_quant_conv=False, use_post_quant_conv=False, mid_block_add_attention=False)
    clip = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(vocab), hidden_size=cfg.text_dim, intermediate_size=4 * cfg.text_dim,
        num_hidden_layers=cfg.text_layers, num_attention_heads=cfg.text_heads,
        max_position_embeddings=cfg.max_text_length, pad_token_id=pad, bos_token_id=bos, eos_token_id=eos,
        projection_dim=cfg.text_dim))
    t5 = T5EncoderModel(T5Config(
        vocab_size=len(vocab), d_model=cfg.text_dim, d_kv=cfg.text_dim // cfg.text_heads, d_ff=2 * cfg.text_dim,
        num_layers=cfg.text_layers, num_heads=cfg.text_heads, relative_attention_num_buckets=16,
        relative_attention_max_distance=cfg.max_text_length, feed_forward_proj="gated-gelu",
        pad_token_id=pad, eos_token_id=eos, decoder_start_token_id=pad, is_encoder_decoder=False,
        use_cache=False, dropout_rate=0.0))
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=4 * cfg.latent_channels, num_layers=cfg.num_layers,
        num_single_layers=cfg.num_single_layers, attention_head_dim=cfg.attention_head_dim,
        num_attention_heads=cfg.num_attention_heads, joint_attention_dim=cfg.text_dim,
        pooled_projection_dim=cfg.text_dim, guidance_embeds=cfg.guidance_embeds,
        axes_dims_rope=tuple(cfg.axes_dims_rope))
    # FLUX.1-dev's scheduler config: resolution-dependent shift mu = calculate_shift(seq_len).
    scheduler = FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
        base_image_seq_len=256, max_image_seq_len=4096)
    tok, tok2 = build_tokenizers(cfg.max_text_length)
    return FluxPipeline(scheduler=scheduler, vae=vae, text_encoder=clip, tokenizer=tok, text_encoder_2=t5,
                        tokenizer_2=tok2, transformer=transformer)


def count_parameters(module: torch.nn.Module) -> int:
    """Number of parameters of ``module``."""
    return sum(p.numel() for p in module.parameters())


def build_tiny_sd3_pipeline(image_size: int = 32, text_dim: int = 32, seed: int = 0):
    """A randomly initialised tiny ``StableDiffusion3Pipeline`` (fp32, CPU) with SD3.5's component
    classes (``SD3Transformer2DModel``, ``AutoencoderKL`` with scaling and shift, two
    ``CLIPTextModelWithProjection`` encoders and a ``T5EncoderModel``, ``FlowMatchEulerDiscreteScheduler``
    with SD3.5's static shift 3), for tests and CPU benchmarks of the sd3 adapter. The tokenizers are
    the embedded world's (other words map to ``<unk>``).

    Args:
        image_size: image side in pixels (the VAE downsamples 4×; a multiple of 8).
        text_dim: hidden size of the CLIP encoders; T5's is twice that (≥ the two CLIPs joined).
        seed: seeds every initialisation.
    """
    from diffusers import SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextModelWithProjection

    vocab = world_vocabulary()
    pad, _, bos, eos = (vocab.index(s) for s in SPECIALS)
    torch.manual_seed(seed)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3, block_out_channels=(8, 16, 16), layers_per_block=1,
        latent_channels=4, norm_num_groups=8, sample_size=image_size, scaling_factor=1.5305, shift_factor=0.0609,
        use_quant_conv=False, use_post_quant_conv=False, mid_block_add_attention=False)

    def clip_encoder() -> CLIPTextModelWithProjection:
        return CLIPTextModelWithProjection(CLIPTextConfig(
            vocab_size=len(vocab), hidden_size=text_dim, intermediate_size=2 * text_dim, num_hidden_layers=2,
            num_attention_heads=4, max_position_embeddings=20, pad_token_id=pad, bos_token_id=bos, eos_token_id=eos,
            projection_dim=text_dim))

    t5 = T5EncoderModel(T5Config(
        vocab_size=len(vocab), d_model=2 * text_dim, d_kv=text_dim // 2, d_ff=2 * text_dim, num_layers=1, num_heads=4,
        relative_attention_num_buckets=8, relative_attention_max_distance=20, feed_forward_proj="gated-gelu",
        pad_token_id=pad, eos_token_id=eos, decoder_start_token_id=pad, is_encoder_decoder=False, use_cache=False,
        dropout_rate=0.0))
    transformer = SD3Transformer2DModel(
        sample_size=image_size // 4, patch_size=2, in_channels=4, out_channels=4, num_layers=2, attention_head_dim=8,
        num_attention_heads=4, joint_attention_dim=2 * text_dim, caption_projection_dim=32,
        pooled_projection_dim=2 * text_dim, pos_embed_max_size=image_size // 4)
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
    tok, tok3 = build_tokenizers(20)
    return StableDiffusion3Pipeline(transformer=transformer, scheduler=scheduler, vae=vae, text_encoder=clip_encoder(),
                                    tokenizer=tok, text_encoder_2=clip_encoder(), tokenizer_2=tok,
                                    text_encoder_3=t5, tokenizer_3=tok3)
