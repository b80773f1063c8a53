"""The flow phase's losses and auxiliary heads: object-weighted flow loss, the label-alignment and
letter heads, model guidance and the adaLN-Zero initialisation."""

from __future__ import annotations

import torch

from ...errors import UserError
from ...world.palette import CLASSES
from ...world.scene import LABEL_CHANNELS, LETTER_CHANNELS


def zero_init_adaln(transformer: torch.nn.Module) -> int:
    """adaLN-Zero (Peebles & Xie 2023, DiT §3.2): zero the weights and biases of every adaptive-norm
    modulation linear (shift, scale and gate of each double- and single-stream block and of
    ``norm_out``) and of ``proj_out``, so that every block starts as the identity and the model
    predicts v = 0. Returns the number of parameters zeroed."""
    from diffusers.models.normalization import (
        AdaLayerNormContinuous,
        AdaLayerNormZero,
        AdaLayerNormZeroSingle,
    )

    linears = [m.linear for m in transformer.modules()
               if isinstance(m, AdaLayerNormZero | AdaLayerNormZeroSingle | AdaLayerNormContinuous)]
    linears.append(transformer.proj_out)
    n = 0
    with torch.no_grad():
        for lin in linears:
            for p in lin.parameters():
                p.zero_()
                n += p.numel()
    return n


def object_weighted_loss(err: torch.Tensor, maps: torch.Tensor, lam: float) -> torch.Tensor:
    """Flow loss with each latent cell weighted by its object content.

    Args:
        err: squared errors of packed latents, [N, T, 4·C] (T tokens of 2×2 cells × C channels).
        maps: the renderer's label maps of the same images, [N, L ≥ len(LABEL_CHANNELS), h, w] in [0, 1].
        lam: λ ≥ 0.

    Returns:
        mean(err · w) / mean(w), with w = 1 + λ·cover per cell and cover = min(1, object-class
        coverage + sign-ink coverage) of the cell; λ = 0 gives the plain mean.
    """
    c = err.shape[-1] // 4
    ink = len(LABEL_CHANNELS) - 1  # "sign:ink" (letter channels, if any, come after it)
    cover = (maps[:, : len(CLASSES)].sum(1, keepdim=True) + maps[:, ink:ink + 1]).clamp(0, 1)
    wgt = 1 + lam * pack_labels(cover.expand(-1, c, -1, -1).contiguous())
    return (err * wgt).mean() / wgt.mean()


def letter_targets(letter_maps: torch.Tensor, min_ink: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token letter classes from the renderer's letter channels.

    Args:
        letter_maps: [N, A, h, w] ink coverage in [0, 1] of each of the A letters of the OCR alphabet
            over the latent cells (``render_with_labels(letters=True)``'s last A channels).
        min_ink: a token counts when the ink of all letters covers at least this share of it.

    Returns:
        ``(target, mask)``: long [N, T] index of the letter with the most ink in each token (T =
        (h/2)(w/2) tokens of 2×2 cells, in FLUX's packing order) and bool [N, T], true where the
        token has enough ink.
    """
    n, a, h, w = letter_maps.shape
    per_token = letter_maps.view(n, a, h // 2, 2, w // 2, 2).mean(dim=(3, 5)).flatten(2).transpose(1, 2)  # [N, T, A]
    return per_token.argmax(-1), per_token.sum(-1) >= min_ink


def letter_loss(logits: torch.Tensor, letter_maps: torch.Tensor,
                min_ink: float) -> tuple[torch.Tensor, float, int] | None:
    """Cross-entropy of the letter head over the tokens that carry sign ink.

    Args:
        logits: [N, T, A] letter-head outputs for the T image tokens.
        letter_maps: [N, A, h, w] letter ink coverage (see :func:`letter_targets`).
        min_ink: see :func:`letter_targets`.

    Returns:
        ``(loss, accuracy, tokens)``: the mean cross-entropy over the counted tokens (a scalar with
        gradient), the head's top-1 accuracy on them and their number; None when no token of the
        batch carries enough ink.
    """
    target, mask = letter_targets(letter_maps, min_ink)
    if not bool(mask.any()):
        return None
    sel, tgt = logits[mask], target[mask]
    loss = torch.nn.functional.cross_entropy(sel, tgt)
    acc = (sel.detach().argmax(-1) == tgt).float().mean().item()
    return loss, acc, int(mask.sum())


def pack_labels(labels: torch.Tensor) -> torch.Tensor:
    """Label maps [N, L, h, w] → per-token targets [N, (h/2)(w/2), 4L], packed exactly as FLUX packs
    latents (``FluxPipeline._pack_latents``: 2×2 cells per token, channel-major)."""
    n, c, h, w = labels.shape
    x = labels.view(n, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(n, (h // 2) * (w // 2), c * 4)



class HeadsMixin:
    """The auxiliary heads and model guidance of the flow phase (a :class:`~.trainer.Pretrainer` part)."""

    def _attach_align_head(self) -> None:
        """The label-alignment head (a linear map from the chosen block's image tokens to 4 cells ×
        the label channels) and a forward hook that keeps that block's image-token output while
        gradients are on (training); the head is not part of the pipeline and is never exported."""
        tr = self.pipe.transformer
        blocks = [*tr.transformer_blocks, *tr.single_transformer_blocks]
        if self.cfg.align_block >= len(blocks):
            raise UserError(f"align_block: {self.cfg.align_block} is out of range; allowed: 0–{len(blocks) - 1}")
        dim = tr.config.num_attention_heads * tr.config.attention_head_dim
        g = torch.Generator().manual_seed(self.cfg.seed + 7)
        n_labels = len(LABEL_CHANNELS) + (len(LETTER_CHANNELS) if self.cfg.align_letters else 0)
        self.align_head = torch.nn.Linear(dim, 4 * n_labels)
        with torch.no_grad():
            self.align_head.weight.copy_(torch.randn(self.align_head.weight.shape, generator=g) * dim ** -0.5)
            self.align_head.bias.zero_()
        if self.cfg.letter_weight > 0:
            self.letter_head = torch.nn.Linear(dim, len(LETTER_CHANNELS))
            with torch.no_grad():
                self.letter_head.weight.copy_(torch.randn(self.letter_head.weight.shape, generator=g) * dim ** -0.5)
                self.letter_head.bias.zero_()
        store = self._hidden

        def keep(module, args, output):  # a closure, not a method: deep copies of the model stay light
            if torch.is_grad_enabled():
                store["h"] = output[1]

        blocks[self.cfg.align_block].register_forward_hook(keep)

    def _guidance_term(self, pred: torch.Tensor, x_t: torch.Tensor, sigma: torch.Tensor, captions: list[str],
                       img_ids: torch.Tensor, c: int, h: int, w: int) -> torch.Tensor:
        """Model guidance's stop-gradient direction sg(v(x_t, c) − v(x_t, ∅)) (Tang et al. 2025, arXiv 2502.12154, the MG objective ε' = ε + w·sg(ε_c − ε_∅), here with velocities).

        Args:
            pred: (B, tokens, channels) the packed velocity just predicted for the batch's captions.
            x_t: (B, C, H, W) noisy latents; sigma: (B,) noise levels; captions: the batch's prompts ("" = dropped).

        Returns:
            (B, tokens, channels), zero on the rows whose caption was dropped (they keep the plain target).
            The unconditional velocity comes from one extra forward of the current weights without
            gradient (the paper uses EMA weights; here the EMA trails by ~1,000 steps).
        """
        pipe, cfg = self.pipe, self.cfg
        keep = torch.tensor([bool(t) for t in captions], device=pred.device)
        if not keep.any():
            return torch.zeros_like(pred)
        with torch.no_grad():  # no gradient: the label head's hook keeps the captioned forward's activations
            embeds, pooled, text_ids = pipe.encode_prompt(
                [""] * len(captions), None, device=self.device, max_sequence_length=cfg.model.max_text_length)
            v_uncond = pipe.transformer(
                hidden_states=pipe._pack_latents(x_t, len(captions), c, h, w), timestep=sigma.to(self.device),
                guidance=(torch.ones(len(captions), device=self.device) if cfg.model.guidance_embeds else None),
                pooled_projections=pooled, encoder_hidden_states=embeds, txt_ids=text_ids,
                img_ids=img_ids, return_dict=False)[0]
        return (pred.detach() - v_uncond) * keep.view(-1, 1, 1).to(pred.dtype)
