"""The pretraining loop: VAE phase, then transformer + text encoders (see the package docstring)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import torch

from ...errors import UserError
from ...world.scene import LABEL_CHANNELS
from ..tiny import build_tiny_pipeline
from .checkpoint import CheckpointMixin
from .config import PHASE_FLOW, PHASE_VAE, PretrainConfig
from .export import ExportMixin
from .losses import HeadsMixin, letter_loss, object_weighted_loss, pack_labels, zero_init_adaln
from .probe import DevProbe, ProbeMixin
from .scenes import CaptionSampler, PoolMixin, _gen, render_batch
from .schedule import lr_at


class _OutOfTime(Exception):
    """The invocation's time budget (``max_seconds``) is spent; a checkpoint was written."""


class Pretrainer(CheckpointMixin, ExportMixin, ProbeMixin, PoolMixin, HeadsMixin):
    """Runs both phases into ``out_dir`` (``checkpoint.pt``, ``cache/``, ``pipeline/``,
    ``pretrain.json``, ``log.jsonl``).

    ``max_seconds`` bounds the wall time of this invocation: once it has passed, the step in
    progress finishes, a checkpoint is written and :meth:`run` returns ``{"stopped": True, ...}``;
    running again resumes exactly (the same weights as one uninterrupted run). For machines lent
    in slots (a GPU for ten minutes at a time) and background jobs that must stop cleanly.
    :meth:`request_stop` (the CLI calls it on SIGINT and SIGTERM) stops the same way after the
    step in progress.

    Raises:
        UserError: ``out_dir`` holds a checkpoint of a different config (resume needs the same one).
    """

    def __init__(self, cfg: PretrainConfig, out_dir: str | Path, device: str = "cpu",
                 progress: Callable[[str, int, int, dict], None] | None = None,
                 max_seconds: float | None = None):
        self.cfg, self.out = cfg, Path(out_dir)
        self.deadline = None if max_seconds is None else time.monotonic() + max_seconds
        self.stop_requested = False
        self.device = torch.device(device)
        self.progress = progress or (lambda *a: None)
        self.world = cfg.world.model_copy(update={"image_size": cfg.model.image_size})
        self.sampler = CaptionSampler(cfg.ocr_fraction, cfg.tag_weights)
        self.pipe = build_tiny_pipeline(cfg.model, seed=cfg.seed)
        if cfg.init == "adaln_zero":
            zero_init_adaln(self.pipe.transformer)
        if cfg.init_from:
            self._init_from(Path(cfg.init_from))
        self.labels: torch.Tensor | None = None
        self.align_head: torch.nn.Linear | None = None
        self.letter_head: torch.nn.Linear | None = None
        self._hidden: dict[str, torch.Tensor] = {}
        if cfg.align_weight > 0:
            self._attach_align_head()
        self.probe = DevProbe(cfg.probe, cfg.model.image_size, cfg.model.image_size, cfg.model.max_text_length) \
            if cfg.probe.every else None
        self.pipe.to(self.device)
        self.phase, self.step = PHASE_VAE, 0
        self.opt: torch.optim.Optimizer | None = None
        self.timing = {"vae_seconds": 0.0, "flow_seconds": 0.0, "encode_seconds": 0.0, "probe_seconds": 0.0}
        self.latents: torch.Tensor | None = None
        self.prompts: list[str] | None = None
        self.ema: dict[str, dict[str, torch.Tensor]] | None = None

    # ----------------------------------------------------------------------------- weight EMA
    _FLOW_MODELS = ("transformer", "text_encoder", "text_encoder_2")

    def _init_ema(self) -> None:
        """EMA copies of the flow-phase models' floating-point state, started from the current weights."""
        if self.cfg.ema_decay > 0 and self.ema is None:
            self.ema = {n: {k: v.detach().clone() for k, v in getattr(self.pipe, n).state_dict().items()
                            if v.is_floating_point()} for n in self._FLOW_MODELS}

    def _update_ema(self) -> None:
        """θ_ema ← d·θ_ema + (1 − d)·θ with d = min(ema_decay, (1 + k)/(10 + k)) at step k (the usual
        warm-up, so the average is not dominated by the initial weights)."""
        if self.ema is None:
            return
        d = min(self.cfg.ema_decay, (1 + self.step) / (10 + self.step))
        with torch.no_grad():
            for n in self._FLOW_MODELS:
                sd = getattr(self.pipe, n).state_dict()
                keys = list(self.ema[n])
                torch._foreach_lerp_([self.ema[n][k] for k in keys], [sd[k].detach() for k in keys], 1.0 - d)

    def _swap_in_ema(self) -> None:
        """Load the EMA weights into the pipeline (for export / the final save)."""
        if self.ema is not None:
            for n in self._FLOW_MODELS:
                getattr(self.pipe, n).load_state_dict(self.ema[n], strict=False)

    def _init_from(self, path: Path) -> None:
        """Copy the weights of ``init_components`` (and, with the VAE, its shift/scaling) from a saved pipeline.

        Raises:
            UserError: the directory is not a pipeline with the configured component shapes.
        """
        from diffusers import FluxPipeline

        from ..spec import quiet_hf_progress

        quiet_hf_progress()
        if not (path / "model_index.json").is_file():
            raise UserError(f"init_from: cannot start from '{path}': no model_index.json there (not a saved pipeline)")
        try:
            src = FluxPipeline.from_pretrained(str(path))
            for n in self.cfg.init_components:
                getattr(self.pipe, n).load_state_dict(getattr(src, n).state_dict())
        except (OSError, ValueError, RuntimeError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserError(f"init_from: cannot start from '{path}': {first}") from None
        self.pipe.vae.register_to_config(shift_factor=src.vae.config.shift_factor,
                                         scaling_factor=src.vae.config.scaling_factor)
        self._init_vae_factors = (src.vae.config.shift_factor, src.vae.config.scaling_factor)

    # ----------------------------------------------------------------------------- checkpointing
    def _trainable(self) -> list[torch.nn.Parameter]:
        p = self.pipe
        if self.phase == PHASE_VAE:
            return list(p.vae.parameters())
        head = [p_ for h in (self.align_head, self.letter_head) if h is not None for p_ in h.parameters()]
        return [*p.transformer.parameters(), *p.text_encoder.parameters(), *p.text_encoder_2.parameters(), *head]

    def _make_optimizer(self) -> None:
        if self.phase == PHASE_VAE:
            self.opt = torch.optim.AdamW(self._trainable(), lr=self.cfg.vae_lr, weight_decay=self.cfg.weight_decay)
        else:
            self.opt = torch.optim.AdamW(self._trainable(), lr=self.cfg.lr, weight_decay=self.cfg.weight_decay,
                                         betas=(0.9, self.cfg.adam_beta2))

    def _log(self, row: dict) -> None:
        with open(self.out / "log.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")

    # ----------------------------------------------------------------------------- phases
    def run(self) -> dict:
        """Run (or resume) both phases; returns the summary written to ``pretrain.json``."""
        self.out.mkdir(parents=True, exist_ok=True)
        resumed = self.load_checkpoint()
        if not resumed:
            self._make_optimizer()
        try:
            if self.phase == PHASE_VAE:
                self._vae_phase()
                self.phase, self.step = PHASE_FLOW, 0
                self._prepare_pool()
                self._make_optimizer()
                self.save_checkpoint()
            self._prepare_pool()
            self._flow_phase()
        except _OutOfTime:
            return {"stopped": True, "phase": "vae" if self.phase == PHASE_VAE else "flow", "step": self.step,
                    "timing": self.timing}
        return self._finish()

    def request_stop(self) -> None:
        """Stop after the step in progress, with a checkpoint (safe to call from a signal handler)."""
        self.stop_requested = True

    def _check_time(self) -> None:
        """After a step: past the deadline or asked to stop, checkpoint and stop (:class:`_OutOfTime`)."""
        if self.stop_requested or (self.deadline is not None and time.monotonic() >= self.deadline):
            self.save_checkpoint()
            raise _OutOfTime

    def _vae_phase(self) -> None:
        cfg, vae = self.cfg, self.pipe.vae
        vae.train()
        while self.step < cfg.vae_steps:
            t0 = time.perf_counter()
            rng, g = _gen(cfg.seed, PHASE_VAE, self.step)
            _, x = render_batch(self.sampler, rng, cfg.vae_batch, self.world)
            x = x.to(self.device)
            post = vae.encode(x).latent_dist
            z = post.mean + post.std * torch.randn(post.mean.shape, generator=g).to(self.device)
            x_hat = vae.decode(z).sample
            mse = (x_hat - x).pow(2).mean()
            kl = post.kl().mean() / z[0].numel()
            loss = mse + cfg.kl_weight * kl * z[0].numel()
            lr = lr_at(self.step, cfg.vae_steps, cfg.vae_lr, cfg.warmup)
            self._update(loss, lr)
            self.step += 1
            self.timing["vae_seconds"] += time.perf_counter() - t0
            row = {"phase": "vae", "step": self.step, "loss": loss.item(), "mse": mse.item(),
                   "kl_per_dim": kl.item(), "lr": lr}
            self.progress("vae", self.step, cfg.vae_steps, row)
            if self.step % 20 == 0 or self.step == cfg.vae_steps:
                self._log(row)
            if self.step % cfg.checkpoint_every == 0 or self.step == cfg.vae_steps:
                self.save_checkpoint()
            if self.step < cfg.vae_steps:
                self._check_time()

    def _update(self, loss: torch.Tensor, lr: float) -> float:
        if not torch.isfinite(loss):
            raise UserError(f"pretraining diverged: non-finite loss at phase {self.phase} step {self.step}")
        for group in self.opt.param_groups:
            group["lr"] = lr
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(self._trainable(), self.cfg.grad_clip)
        self.opt.step()
        return float(norm)

    def _flow_phase(self) -> None:
        cfg, pipe = self.cfg, self.pipe
        pipe.transformer.train(), pipe.text_encoder.train(), pipe.text_encoder_2.train()
        h = w = self.latents.shape[-1]
        c = self.latents.shape[1]
        img_ids = pipe._prepare_latent_image_ids(cfg.batch, h // 2, w // 2, self.device, torch.float32)
        self._init_ema()
        while self.step < cfg.steps:
            t0 = time.perf_counter()
            rng, g = _gen(cfg.seed, PHASE_FLOW, self.step)
            idx = rng.integers(len(self.prompts), size=cfg.batch)
            x0 = self.latents[torch.from_numpy(idx)]
            noise = torch.randn(x0.shape, generator=g)
            sigma = torch.sigmoid(torch.randn(cfg.batch, generator=g))
            captions = [self.prompts[i] for i in idx]
            if cfg.caption_dropout > 0:
                drop = rng.random(cfg.batch) < cfg.caption_dropout
                captions = ["" if d else c_ for c_, d in zip(captions, drop, strict=True)]
            s = sigma.view(-1, 1, 1, 1)
            x_t = ((1 - s) * x0 + s * noise).to(self.device)
            target = (noise - x0).to(self.device)
            prompt_embeds, pooled, text_ids = pipe.encode_prompt(
                captions, None, device=self.device,
                max_sequence_length=cfg.model.max_text_length)
            pred = pipe.transformer(
                hidden_states=pipe._pack_latents(x_t, cfg.batch, c, h, w), timestep=sigma.to(self.device),
                guidance=(torch.ones(cfg.batch, device=self.device) if cfg.model.guidance_embeds else None),
                pooled_projections=pooled, encoder_hidden_states=prompt_embeds, txt_ids=text_ids,
                img_ids=img_ids, return_dict=False)[0]
            packed_target = pipe._pack_latents(target, cfg.batch, c, h, w)
            if cfg.model_guidance > 0 and self.step >= cfg.model_guidance_start:
                packed_target = packed_target + cfg.model_guidance * self._guidance_term(
                    pred, x_t, sigma, captions, img_ids, c, h, w)
            err = (pred - packed_target).pow(2)
            flow_loss = err.mean()
            loss, align = flow_loss, None
            if cfg.object_weight > 0:
                maps = (self.labels[torch.from_numpy(idx)].float() / 255.0).to(self.device)
                loss = object_weighted_loss(err, maps, cfg.object_weight)
            letter = None
            if self.align_head is not None and (cfg.align_steps is None or self.step < cfg.align_steps):
                hidden = self._hidden.pop("h")
                maps = self.labels[torch.from_numpy(idx)].float() / 255.0
                logits = self.align_head(hidden)
                labels = pack_labels(maps).to(self.device)
                align = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels)
                loss = loss + cfg.align_weight * align
                if self.letter_head is not None:
                    letter = letter_loss(self.letter_head(hidden), maps[:, len(LABEL_CHANNELS):].to(self.device),
                                         cfg.letter_min_ink)
                    if letter is not None:
                        loss = loss + cfg.letter_weight * letter[0]
            lr = lr_at(self.step, cfg.steps, cfg.lr, cfg.warmup, cfg.schedule, cfg.decay_fraction)
            norm = self._update(loss, lr)
            self._update_ema()
            self.step += 1
            self.timing["flow_seconds"] += time.perf_counter() - t0
            row = {"phase": "flow", "step": self.step, "loss": flow_loss.item(), "grad_norm": norm, "lr": lr}
            if align is not None:
                row["align_loss"] = align.item()
            if letter is not None:
                row["letter_loss"], row["letter_acc"], row["letter_tokens"] = letter[0].item(), letter[1], letter[2]
            self.progress("flow", self.step, cfg.steps, row)
            if self.step % 20 == 0 or self.step == cfg.steps:
                self._log(row)
            every = cfg.probe.every
            if self.probe is not None and (self.step * cfg.batch) // every > ((self.step - 1) * cfg.batch) // every:
                self.run_probe()
            if self.step % cfg.checkpoint_every == 0 or self.step == cfg.steps:
                self.save_checkpoint()
            if self.step < cfg.steps:
                self._check_time()
