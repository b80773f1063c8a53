"""Export: the EMA weights as a ``save_pretrained`` pipeline, and the run's summary ``pretrain.json``."""

from __future__ import annotations

import os
import platform
import shutil
from pathlib import Path

import torch

from ...errors import UserError
from ...io import write_json
from ..tiny import count_parameters


class ExportMixin:
    """Export of a :class:`~.trainer.Pretrainer`'s weights (from a checkpoint, or at the end of the run)."""

    def export(self, dest: str | Path) -> dict:
        """Write the current checkpoint's weights as a ``save_pretrained`` pipeline in ``dest``
        (to look at a run in progress); returns ``{"phase", "step"}``.

        Raises:
            UserError: no checkpoint in the output directory.
        """
        if not self.load_checkpoint():
            raise UserError(f"{self.out}: no checkpoint.pt to export")
        from ..spec import quiet_hf_progress

        quiet_hf_progress()
        self._swap_in_ema()
        self.pipe.to("cpu").save_pretrained(dest)
        return {"phase": ("vae", "flow")[self.phase], "step": self.step, "ema": self.ema is not None}

    def _finish(self) -> dict:
        pipe, cfg = self.pipe, self.cfg
        self._swap_in_ema()
        target = self.out / "pipeline"
        tmp = self.out / "pipeline.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        pipe.to("cpu")
        from ..spec import quiet_hf_progress

        quiet_hf_progress()
        pipe.save_pretrained(tmp)
        shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp, target)
        t = self.timing
        summary = {
            "config": cfg.model_dump(mode="json"),
            "parameters": {n: count_parameters(getattr(pipe, n))
                           for n in ("vae", "text_encoder", "text_encoder_2", "transformer")},
            "vae_factors": {"shift_factor": pipe.vae.config.shift_factor,
                            "scaling_factor": pipe.vae.config.scaling_factor},
            "timing": t,
            "throughput_images_per_s": {
                "vae": cfg.vae_steps * cfg.vae_batch / t["vae_seconds"] if t["vae_seconds"] else None,
                "flow": cfg.steps * cfg.batch / t["flow_seconds"] if t["flow_seconds"] else None},
            "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                        "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                        "device": str(self.device), "torch": torch.__version__},
        }
        write_json(self.out / "pretrain.json", summary)
        return summary
