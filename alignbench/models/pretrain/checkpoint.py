"""Resumable training state: atomic checkpoints and the config check on resume."""

from __future__ import annotations

from pathlib import Path

from ...errors import UserError
from ...io import load_checkpoint_file, save_checkpoint_file
from .config import PHASE_FLOW, PretrainConfig


class CheckpointMixin:
    """Checkpointing of a :class:`~.trainer.Pretrainer` (weights, optimizer, EMA, heads, step, timing)."""

    @property
    def ckpt_path(self) -> Path:
        """``<out>/checkpoint.pt``, the resumable training state."""
        return self.out / "checkpoint.pt"

    def save_checkpoint(self) -> None:
        """Atomically write weights, optimizer, EMA, phase, step and timing to :attr:`ckpt_path`."""
        p = self.pipe
        state = {"config": self.cfg.model_dump(mode="json"), "phase": self.phase, "step": self.step,
                 "timing": self.timing,
                 "models": {n: getattr(p, n).state_dict() for n in ("vae", "text_encoder", "text_encoder_2",
                                                                    "transformer")},
                 "vae_factors": (p.vae.config.shift_factor, p.vae.config.scaling_factor),
                 "optimizer": self.opt.state_dict() if self.opt else None,
                 "ema": self.ema,
                 "align_head": self.align_head.state_dict() if self.align_head is not None else None,
                 "letter_head": self.letter_head.state_dict() if self.letter_head is not None else None}
        save_checkpoint_file(self.ckpt_path, state)

    def load_checkpoint(self) -> bool:
        """Restore :attr:`ckpt_path` if it exists; returns whether it did.

        Raises:
            UserError: the checkpoint was written with another configuration (fields added later
                match when they hold their default), or holds more than tensors and plain containers
                (loaded with ``weights_only=True``).
        """
        if not self.ckpt_path.exists():
            return False
        state = load_checkpoint_file(self.ckpt_path, map_location=self.device)
        saved, current = state["config"], self.cfg.model_dump(mode="json")
        defaults = PretrainConfig().model_dump(mode="json")
        # fields added after the checkpoint was written match when they hold their default
        saved = {**{k: defaults[k] for k in current if k not in saved}, **saved}
        # settings that do not change the weights may differ
        for k in ("probe", "checkpoint_every"):
            saved[k] = current[k]
        # a wsd run may be extended or shortened, or given another decay fraction (a decay branch of
        # chosen length from the current step), while it has not started decaying under either setting
        if (current["schedule"] == saved["schedule"] == "wsd" and state["phase"] == PHASE_FLOW
                and state["step"] <= saved["steps"] * (1 - saved["decay_fraction"])
                and state["step"] <= current["steps"] * (1 - current["decay_fraction"])):
            saved["steps"], saved["decay_fraction"] = current["steps"], current["decay_fraction"]
        diff = sorted(k for k in current if saved.get(k) != current[k])
        if diff:
            raise UserError(f"{self.out}: holds a checkpoint of a different pretraining config (differs in "
                            f"{', '.join(diff)}); use a new --out or the same settings to resume")
        for n, sd in state["models"].items():
            getattr(self.pipe, n).load_state_dict(sd)
        self.pipe.vae.register_to_config(shift_factor=state["vae_factors"][0], scaling_factor=state["vae_factors"][1])
        self.phase, self.step, self.timing = state["phase"], state["step"], state["timing"]
        self._make_optimizer()
        if state["optimizer"] is not None:
            self.opt.load_state_dict(state["optimizer"])
        self.ema = state.get("ema")
        if self.align_head is not None and state.get("align_head") is not None:
            self.align_head.load_state_dict(state["align_head"])
        if self.letter_head is not None and state.get("letter_head") is not None:
            self.letter_head.load_state_dict(state["letter_head"])
        return True
