"""``alignbench pretrain``: pretrain the embedded backbone on ShapesWorld.

Two phases (specs/shapes_world.md, "Embedded backbone"):

1. **VAE**: ``AutoencoderKL`` on freshly rendered scenes, loss = MSE(x̂, x) + β_KL · KL(q(z|x) ‖ N(0, I))
   (images in [-1, 1]; Kingma & Welling 2014, with the tiny KL weight of latent-diffusion VAEs).
   Afterwards the latent statistics of a fixed pool of scenes set the pipeline's
   ``shift_factor`` (mean) and ``scaling_factor`` (1/std), as FLUX's VAE config does.
2. **Transformer + both text encoders**: rectified-flow loss (Liu et al. 2023; Esser et al. 2024,
   eq. 1–3): x_σ = (1 − σ)·x₀ + σ·ε, target velocity v = ε − x₀, σ ~ logit-normal(0, 1) (SD3's
   timestep density), loss = ‖v_θ(x_σ, σ, prompt) − v‖² averaged over latent elements. The model
   sees the packed latents, image/text ids and pooled/sequence prompt embeddings exactly as
   ``FluxPipeline`` prepares them.

Captions come from the task prompt generators (GenEval format and OCR signs); every test prompt of
``tasks/data/*_test.jsonl`` and every OCR test target string is held out.

Determinism and resume: every random draw of step k comes from generators seeded with
(seed, phase, k), so a run killed at any point and resumed from its last checkpoint (model,
optimizer and step, written atomically) reaches bit-identical weights on CPU.

Files, in the order of the data flow: ``config`` (:class:`PretrainConfig`), ``scenes`` (caption
sampler, rendered batches, the latent pool), ``losses`` (flow-loss weighting, label and letter heads,
model guidance), ``schedule`` (learning rate) and ``probe`` (the dev probe), ``checkpoint`` (resume),
``export`` (pipeline and summary), ``trainer`` (:class:`Pretrainer`, the two phases).
"""

from .config import CAPTION_TAGS, COMPONENTS, PHASE_FLOW, PHASE_VAE, PretrainConfig
from .losses import letter_loss, letter_targets, object_weighted_loss, pack_labels, zero_init_adaln
from .probe import DevProbe, ProbeConfig, plot_curves, probe_records, read_curves, summarize_probe
from .scenes import CaptionSampler, render_batch
from .schedule import lr_at
from .trainer import Pretrainer

__all__ = ["CAPTION_TAGS", "COMPONENTS", "PHASE_FLOW", "PHASE_VAE", "CaptionSampler", "DevProbe", "PretrainConfig",
           "Pretrainer", "ProbeConfig", "letter_loss", "letter_targets", "lr_at", "object_weighted_loss",
           "pack_labels", "plot_curves", "probe_records", "read_curves", "render_batch", "summarize_probe",
           "zero_init_adaln"]
