"""The trainer: one loop for every algorithm (DESIGN.md "Data flow of one iteration").

prompts → ``algo.plan`` → rollout (θ_old, no grad) → decode → task reward per group →
``algo.advantages`` → ``inner_updates`` × (recompute log-probs with grad → loss → backward → clip
grad norm → AdamW step → EMA update) → one ``metrics.jsonl`` row. The starting model is evaluated
before the first iteration and the EMA model after the last, with the evaluation protocol of
:mod:`alignbench.evaluation`.

Everything random in iteration n is drawn from generators seeded by (seed, n), so a run resumed
from its checkpoint (LoRA weights, AdamW, schedule, EMA and algorithm state after iteration n − 1)
repeats the uninterrupted run exactly. The loop runs on an ``accelerate.Accelerator``: one process
on CPU; under ``accelerate launch`` each process takes its share of the iteration's prompts and the
LoRA gradients are averaged before the optimizer step.
"""

from __future__ import annotations

import math
import resource
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field

from ..config import StrictModel, apply_overrides, deep_merge, load_yaml, validate
from ..errors import ConfigError, UserError
from ..evaluation import EvalConfig, evaluate, write_eval
from ..io import atomic_write_bytes, load_checkpoint_file, save_checkpoint_file, write_json, write_jsonl
from ..registry import algorithms
from ..sampling.plan import execute
from .algorithm import Algorithm, Context, Progress, Rewards
from .ema import EMA
from .update import accumulate_gradients


class NonFiniteError(UserError):
    """A log-prob, reward, advantage, loss or gradient became NaN/inf; the message names the
    iteration and the quantity."""


class ProtocolConfig(StrictModel):
    """The matched-comparison protocol (specs/algorithms.md §6): what every algorithm of a comparison
    shares."""

    iterations: int = Field(40, ge=1, description="training iterations N")
    prompts_per_iteration: int = Field(4, ge=1, description="prompts sampled (without replacement) per iteration")
    prompt_mix: Literal["test_tags", "uniform"] = Field(
        "test_tags", description="how each iteration's train prompts are drawn: test_tags = each tag as often as "
        "in the test split (a prompt's weight is its tag's test share over its tag's train count); uniform = every "
        "train prompt equally (runs made before this field existed)")
    prompt_replacement: bool = Field(False, description="draw an iteration's prompts with replacement, so that "
                                     "one prompt can fill several groups (a one-prompt task with more than one "
                                     "group per iteration); false = without replacement")
    antithetic: bool = Field(False, description="mirrored branch noise: at a branch point, children 2j and 2j+1 "
                             "draw ξ and −ξ (each child's kernel is unchanged, siblings are paired), which cancels "
                             "the part of the gradient noise that is even in ξ; chains (fan-out 1) are unaffected")
    holdout_dev: bool = Field(True, description="train on the train split less its dev prompts (task.dev_holdout), "
                              "so that the dev learning curve is never scored on a trained prompt; runs made "
                              "before this field existed resume with false")
    group_size: int = Field(27, ge=2, description="K images (leaves) per prompt")
    lora_rank: int = Field(8, ge=1, description="LoRA rank r")
    lora_alpha: float = Field(16.0, gt=0, description="LoRA α (scale α/r)")
    train_steps: int | None = Field(None, ge=2, description="sampling steps of rollouts; default: the model's")
    reward_weights: dict[str, float] | None = Field(
        None, description="training reward = Σ weight·sub-score; default: the task's train_reward with weight 1")
    rollout_batch: int = Field(256, ge=1, description="rows per transformer forward during rollouts")
    checkpoint_every: int = Field(1, ge=1, description="iterations between checkpoints")
    update_memory_gb: float | None = Field(None, gt=0, description="CUDA: choose the update's micro-batch (trained "
                                           "transitions per backward) so that its peak memory stays within this "
                                           "many GiB, measured on the first update; exact, so results do not change "
                                           "(None: the algorithm's micro_batch)")
    gradient_checkpointing: bool = Field(False, description="recompute the transformer's block activations in "
                                         "the update's backward pass instead of keeping them (diffusers' "
                                         "enable_gradient_checkpointing): less memory, ~1 more forward per "
                                         "update, the same gradients; on in the presets of the real models")


#: Protocol presets per model. tiny-shapes: sized so that ``alignbench run --algo tmpo --task
#: geneval`` fits in 10 minutes on 2 CPU cores. flux-dev: 27 images per prompt (TMPO's 3×3×3 tree;
#: Flow-GRPO's paper uses 24), LoRA r = 64, α = 128 as in every FLUX recipe of algorithms.md.
PROTOCOL_PRESETS: dict[str, dict[str, Any]] = {
    "tiny-shapes": {},
    "flux-dev": {"iterations": 300, "prompts_per_iteration": 8, "group_size": 27, "lora_rank": 64,
                 "lora_alpha": 128.0, "rollout_batch": 16, "gradient_checkpointing": True},
    # Flow-GRPO's SD3.5-Medium recipe: 24 images per prompt, LoRA r = 32, α = 64 (train_sd3.py)
    "flux-dev-random": {"iterations": 300, "prompts_per_iteration": 8, "group_size": 27, "lora_rank": 64,
                        "lora_alpha": 128.0, "rollout_batch": 16, "gradient_checkpointing": True},
    "sd35m-random": {"iterations": 300, "prompts_per_iteration": 8, "group_size": 24, "lora_rank": 32,
                     "lora_alpha": 64.0, "rollout_batch": 16, "gradient_checkpointing": True},
    "sd3.5-medium": {"iterations": 300, "prompts_per_iteration": 8, "group_size": 24, "lora_rank": 32,
                     "lora_alpha": 64.0, "rollout_batch": 16, "gradient_checkpointing": True},
}

SECTIONS = ("algo", "protocol", "eval", "model", "reward")

#: Version of the trainer's random streams, recorded in every run config as ``streams``. 2 (commit
#: d0fe57c on): prompts from a stream of their own and SDE noise keyed per (iteration, prompt place, step,
#: branch path). Runs without the key were made with version 1 (prompts drawn after the plan, one noise
#: generator per iteration): ``compare`` does not count them as matching a new config, and a run
#: cannot resume across versions, so that no run or leaderboard mixes the two.
RNG_STREAMS = 2


def prompt_probabilities(train: list[dict], test: list[dict] | None, mix: str = "test_tags") -> np.ndarray:
    """Probability of drawing each train prompt at an iteration, float64 [len(train)], summing to 1.

    ``uniform``: 1/n each. ``test_tags``: p_i = share_test(tag_i) / n_train(tag_i), renormalised over the
    tags that occur in both splits, so that the tags are trained in the proportions they are evaluated
    in (a split made of every unused combination is dominated by the tags with most combinations, e.g.
    ShapesWorld's GenEval train split is 67% color_attr against 19% of the test). Prompts without a
    ``tag`` count as one tag ``None``; a train tag absent from the test gets 0.

    Raises:
        ConfigError: ``test_tags`` with no train tag in the test split.
    """
    n = len(train)
    if mix == "uniform" or n == 0:
        return np.full(n, 1.0 / max(n, 1))
    from collections import Counter

    n_train = Counter(r.get("tag") for r in train)
    n_test = Counter(r.get("tag") for r in (test or []))
    w = np.array([n_test[r.get("tag")] / n_train[r.get("tag")] for r in train], dtype=np.float64)
    if w.sum() <= 0:
        raise ConfigError("protocol.prompt_mix: no train prompt's tag occurs in the test split, so 'test_tags' "
                          "has nothing to match; allowed: test_tags, uniform")
    return w / w.sum()


def run_prompt_mix(protocol: dict[str, Any]) -> str:
    """The ``prompt_mix`` a run's stored protocol section draws with: its value, or ``uniform`` for a
    config written before the field existed (so that such a run resumes with the prompts it began with)."""
    return str(protocol.get("prompt_mix", "uniform"))


def run_holdout_dev(protocol: dict[str, Any]) -> bool:
    """Whether a run's stored protocol trains without the dev prompts: its ``holdout_dev``, or False
    for a config written before the field existed (such a run resumes on the prompts it began with)."""
    return bool(protocol.get("holdout_dev", False))


def algorithm_class(name: str) -> type[Algorithm]:
    """The registered algorithm class for ``name`` (or ``pkg.module:Class``).

    Raises:
        UnknownNameError / UserError: unknown name (lists the known ones) or not an Algorithm.
    """
    cls = algorithms.get(name)
    if not (isinstance(cls, type) and issubclass(cls, Algorithm)):
        raise UserError(f"--algo: '{name}' is not an alignbench Algorithm class")
    return cls


def resolve_run_config(algo: str, task: str, model: str, seed: int, *, config_file: str | Path | None = None,
                       overrides: list[str] | None = None, iterations: int | None = None) -> dict[str, Any]:
    """The fully resolved run configuration (written into ``run.json``).

    Precedence per section: defaults < presets (model, task) < the task file's ``defaults`` <
    ``config_file`` < ``--set``
    (``algo.*``, ``protocol.*``, ``eval.*``, ``model.*``) < ``iterations``.

    Raises:
        ConfigError: unknown section or field, bad value (message names the dotted field).
    """
    from ..models.spec import get_model
    from ..task import get_task

    file_data = load_yaml(config_file) if config_file else {}
    set_data = apply_overrides({}, overrides or [])
    for source, data in (("config file", file_data), ("--set", set_data)):
        bad = sorted(set(data) - set(SECTIONS))
        if bad:
            raise ConfigError(f"{bad[0]}: unknown section in {source}; allowed: {', '.join(SECTIONS)}")
    model_over = deep_merge(file_data.get("model", {}), set_data.get("model", {}))
    spec = get_model(model, **model_over)
    t = get_task(task)
    t.domain(spec.domain)
    cls = algorithm_class(algo)
    algo_layers = [cls.presets.get(f"task:{t.name}", {}), cls.presets.get(spec.name, {}),
                   cls.presets.get(f"{spec.name}:{t.name}", {}), file_data.get("algo", {}), set_data.get("algo", {})]
    algo_data: dict[str, Any] = cls.Config().model_dump()
    for layer in algo_layers:
        algo_data = deep_merge(algo_data, layer)
    algo_cfg = validate(cls.Config, algo_data, prefix="algo")
    proto_data = deep_merge(ProtocolConfig().model_dump(), PROTOCOL_PRESETS.get(spec.name, {}))
    proto_data = deep_merge(proto_data, t.spec.defaults.get("protocol", {}))
    proto_data = deep_merge(deep_merge(proto_data, file_data.get("protocol", {})), set_data.get("protocol", {}))
    if iterations is not None:
        proto_data["iterations"] = iterations
    protocol = validate(ProtocolConfig, proto_data, prefix="protocol")
    from ..evaluation import eval_preset

    eval_data = deep_merge(deep_merge(EvalConfig().model_dump(), eval_preset(spec.name, t.name)),
                           t.spec.defaults.get("eval", {}))
    eval_cfg = validate(EvalConfig, deep_merge(deep_merge(eval_data, file_data.get("eval", {})),
                                               set_data.get("eval", {})), prefix="eval")
    from ..rewards.pretrained import RewardOptions

    reward_cfg = validate(RewardOptions, deep_merge(file_data.get("reward", {}), set_data.get("reward", {})),
                          prefix="reward")
    weights = protocol.reward_weights or {t.domain(spec.domain).train_reward: 1.0}
    keys = reward_keys(t, spec.domain, reward_cfg.model_dump())
    for k in weights:
        if k not in keys:
            raise ConfigError(f"protocol.reward_weights: '{k}' is not a sub-score of the task's reward; "
                              f"allowed: {', '.join(keys)}")
    protocol = protocol.model_copy(update={"reward_weights": weights,
                                           "train_steps": protocol.train_steps or spec.train_steps})
    source = str(Path(task).resolve()) if task.endswith((".yaml", ".yml")) else task
    return {"algorithm": algo, "task": t.name, "task_source": source, "seed": seed, "streams": RNG_STREAMS,
            "model": spec.model_dump(),
            "protocol": protocol.model_dump(), "eval": eval_cfg.model_dump(), "algo": algo_cfg.model_dump(mode="json"),
            "reward": reward_cfg.model_dump()}


def reward_keys(task, domain: str, options: dict[str, Any] | None = None) -> tuple[str, ...]:
    """Sub-score names of ``task``'s reward for ``domain``, read from the reward class when it
    declares them (so that resolving a config loads no reward weights), else from an instance.

    Raises:
        ConfigError: ``options`` do not suit the reward (e.g. a formula it does not have).
    """
    from ..registry import rewards

    spec = task.domain(domain).reward
    names = list(spec) if isinstance(spec, dict) else [spec]
    keys: list[str] = ["total"] if isinstance(spec, dict) else []
    for name in names:
        factory = rewards.get(name)
        declared = getattr(factory, "keys", None)
        if not (isinstance(declared, tuple) and declared):
            return tuple(task.with_reward_options(options).reward(domain).keys)
        if hasattr(factory, "check_options"):  # rewards with weights: their options, checked without loading
            factory.check_options(options)
        keys.extend(declared)
    return tuple(keys)


def task_for_run(config: dict[str, Any], device: str | torch.device | None = None):
    """The task of a resolved run config, its rewards built with the config's ``reward`` options
    (a reward device left unset follows ``device``, the run's)."""
    from ..task import get_task

    options = dict(config.get("reward") or {})
    if not options.get("device") and device is not None:
        options["device"] = str(device)
    return get_task(config.get("task_source", config["task"])).with_reward_options(options)


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


class Trainer:
    """Runs (or resumes) one training run in ``run_dir``.

    Args:
        run_dir: the run directory (``run.json`` config, ``metrics.jsonl``, ``eval_base.*``,
            ``eval.*``, ``samples/``, ``checkpoint/``).
        config: the resolved config (:func:`resolve_run_config`).
        backbone: the loaded backbone adapter (no LoRA yet).
        task: the loaded task.
        accelerator: an ``accelerate.Accelerator`` (default: one for the backbone's device, with the
            trackers of ``report_to``).
        base_cache: folder of the base-model evaluation cache (:mod:`~alignbench.base_cache`; the
            CLI uses ``<run root>/.base_eval``), or None to always evaluate the base model.
        report_to: experiment trackers (:mod:`~alignbench.reporting.trackers`): none, tensorboard,
            wandb or all; used when no ``accelerator`` is given.
        progress: ``progress(event, info)`` with events ``eval`` (stage, done, total),
            ``iteration`` (the metrics row) and ``start`` (first iteration, total).

    Raises:
        ConfigError: ``config`` was made with other random streams (``streams`` ≠ :data:`RNG_STREAMS`),
            or its prompts per iteration do not fit the task or the number of processes.
    """

    def __init__(self, run_dir: Path, config: dict[str, Any], backbone, task, accelerator=None,
                 progress: Callable[[str, Any], None] | None = None, report_to: str = "none",
                 base_cache: Path | None = None):
        from accelerate import Accelerator

        from ..reporting.trackers import trackers_for

        self.run_dir, self.config, self.backbone, self.task = Path(run_dir), config, backbone, task
        if config.get("streams", 1) != RNG_STREAMS:
            raise ConfigError(f"streams: this run was made with the trainer's random streams version "
                              f"{config.get('streams', 1)} and this alignbench draws version {RNG_STREAMS}, so it "
                              "cannot continue it exactly; start a new run (finished runs still render)")
        log_with = trackers_for(report_to)
        self.acc = accelerator or Accelerator(cpu=backbone.device.type == "cpu", log_with=log_with or None,
                                              project_dir=str(self.run_dir / "trackers") if log_with else None)
        self.progress = progress or (lambda *a: None)
        self.base_cache = base_cache
        self.protocol = ProtocolConfig.model_validate(config["protocol"])
        self.eval_cfg = EvalConfig.model_validate(config["eval"])
        cls = algorithm_class(config["algorithm"])
        self.seed = int(config["seed"])
        domain = config["model"]["domain"]
        self.reward = task.reward(domain)
        self.train_prompts = task.training_prompts(domain, run_holdout_dev(config["protocol"]))
        if self.eval_cfg.dev_every and not task.prompts("dev", domain):
            raise ConfigError(f"eval.dev_every: task '{task.name}' has no dev prompts (every tag of its train split "
                              "has a single prompt and the task names no dev file); set eval.dev_every=0 or add "
                              "prompts: {dev: FILE} to the task")
        if self.protocol.prompts_per_iteration % self.acc.num_processes:
            raise ConfigError(f"protocol.prompts_per_iteration: {self.protocol.prompts_per_iteration} prompts cannot be "
                              f"split evenly over {self.acc.num_processes} processes; use a multiple of "
                              f"{self.acc.num_processes}")
        if self.protocol.prompts_per_iteration > len(self.train_prompts) and not self.protocol.prompt_replacement:
            raise ConfigError(f"protocol.prompts_per_iteration: {self.protocol.prompts_per_iteration} exceeds the "
                              f"{len(self.train_prompts)} train prompts of task '{task.name}'; lower it or set "
                              "protocol.prompt_replacement=true")
        mix = run_prompt_mix(config["protocol"])
        self.prompt_p = prompt_probabilities(self.train_prompts, task.prompts("test", domain) if mix == "test_tags"
                                             else None, mix)
        if int((self.prompt_p > 0).sum()) < self.protocol.prompts_per_iteration and not self.protocol.prompt_replacement:
            raise ConfigError(f"protocol.prompts_per_iteration: {self.protocol.prompts_per_iteration} exceeds the "
                              f"{int((self.prompt_p > 0).sum())} train prompts that prompt_mix '{mix}' can draw")
        if np.all(self.prompt_p == self.prompt_p[0]):
            self.prompt_p = None  # equal weights draw exactly as the uniform stream always has (p=None)
        steps = self.protocol.train_steps
        self.weights = dict(self.protocol.reward_weights)
        ctx = Context(num_steps=steps, sigmas=backbone.sigmas(steps).tolist(), group_size=self.protocol.group_size,
                      iterations=self.protocol.iterations, task=task, reward_weights=self.weights,
                      process_index=self.acc.process_index, num_processes=self.acc.num_processes,
                      gather=self._gather)
        self.algo: Algorithm = cls(cls.Config.model_validate(config["algo"]), ctx)
        self.algo.check_plan(self.algo.plan(Progress(0, self.protocol.iterations), np.random.default_rng(0)))
        c = self.algo.config
        self.params = backbone.add_lora(self.protocol.lora_rank, self.protocol.lora_alpha, seed=self.seed)
        if self.protocol.gradient_checkpointing:
            backbone.transformer.enable_gradient_checkpointing()  # active only where gradients are taken
        self.optimizer = torch.optim.AdamW(self.params, lr=c.lr, betas=tuple(c.adam_betas), weight_decay=c.weight_decay)
        total = self.protocol.iterations * c.inner_updates
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: self._lr_factor(s, total))
        self.ema = EMA(self.params, c.ema_decay, c.ema_every)
        # the KL reference: None = adapter disabled; a LoRA snapshot for algorithms with reference = "snapshot"
        self.reference_state = backbone.lora_state() if cls.reference == "snapshot" else None
        self.steps_since_reset = 0
        self.features = None
        if cls.needs_features:
            from ..metrics.features import feature_extractor

            self.features = feature_extractor(domain, self.eval_cfg.features_source, str(backbone.device))
        self.rows: list[dict[str, Any]] = []
        self.start_iteration_done = 0  # iterations covered by the checkpoint on disk

    # ------------------------------------------------------------------------------ memory
    def _plan_memory(self, rollout, embeds) -> None:
        """Set the algorithm's micro-batch from ``protocol.update_memory_gb`` (CUDA; once per process,
        at the first update it runs; :mod:`~alignbench.training.memory`)."""
        from . import memory

        budget = self.protocol.update_memory_gb
        if budget is None or getattr(self, "_memory_planned", False) or not memory.supported(self.backbone.device):
            return
        base, per_edge = memory.measure_update_memory(self.backbone, rollout, embeds,
                                                      self.algo.config.logprob_reduction)
        n = memory.plan_micro_batch(budget * memory.GIB, base, per_edge, rollout.x.shape[0])
        self.algo.config.micro_batch = n
        self._memory_planned = True
        self.memory_plan = {"micro_batch": n, "base_gib": base / memory.GIB, "per_edge_gib": per_edge / memory.GIB}

    # ------------------------------------------------------------------------------ schedule
    def _lr_factor(self, step: int, total: int) -> float:
        c = self.algo.config
        if c.warmup_steps and step < c.warmup_steps:
            return (step + 1) / c.warmup_steps
        if c.lr_schedule == "constant":
            return 1.0
        t = min(1.0, (step - c.warmup_steps) / max(1, total - c.warmup_steps))
        return c.lr_min_ratio + (1 - c.lr_min_ratio) * 0.5 * (1 + math.cos(math.pi * t))

    # ------------------------------------------------------------------------------ checkpoints
    @property
    def checkpoint_path(self) -> Path:
        """``<run_dir>/checkpoint/state.pt``: LoRA, EMA, optimizer, scheduler, RNG and algorithm state."""
        return self.run_dir / "checkpoint" / "state.pt"

    def save_checkpoint(self, iterations_done: int) -> None:
        """Atomically write ``checkpoint/state.pt`` (everything needed to resume) and
        ``checkpoint/adapter.safetensors`` (the EMA LoRA weights, the model that is evaluated)."""
        from safetensors.torch import save as st_save

        if not self.acc.is_main_process:
            return
        names = [n for n, p in self.backbone.transformer.named_parameters() if "lora_" in n]
        state = {"iterations_done": iterations_done, "lora": [p.detach().cpu().clone() for p in self.params],
                 "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                 "ema": self.ema.state_dict(), "algo": self.algo.state_dict(), "names": names,
                 "reference_state": self.reference_state, "steps_since_reset": self.steps_since_reset}
        save_checkpoint_file(self.checkpoint_path, state)
        ema = {n: s.detach().cpu().contiguous() for n, s in zip(names, self.ema.shadow, strict=True)}
        atomic_write_bytes(self.checkpoint_path.with_name("adapter.safetensors"),
                           st_save(ema, metadata={"iterations_done": str(iterations_done)}))

    def load_checkpoint(self) -> int:
        """Restore the state of ``checkpoint/state.pt``; returns the iterations already done (0 if none).

        Raises:
            UserError: the checkpoint cannot be read, or holds more than tensors and plain containers
                (it is loaded with ``weights_only=True``: a crafted file cannot run code).
        """
        if not self.checkpoint_path.exists():
            return 0
        state = load_checkpoint_file(self.checkpoint_path)
        with torch.no_grad():
            for p, v in zip(self.params, state["lora"], strict=True):
                p.copy_(v)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.ema.load_state_dict(state["ema"])
        self.algo.load_state_dict(state["algo"])
        self.reference_state = state.get("reference_state", self.reference_state)
        self.steps_since_reset = int(state.get("steps_since_reset", 0))
        return int(state["iterations_done"])

    # ------------------------------------------------------------------------------ evaluation
    def _evaluate(self, prefix: str, cost: dict[str, float] | None = None) -> dict[str, Any]:
        """Evaluate the current weights (or read ``<prefix>.json`` if it exists); ``cost`` (the run's
        cost figures) goes into the summary and, as ``cost_<key>``, into every ``eval.jsonl`` row."""
        import json

        path = self.run_dir / f"{prefix}.json"
        if path.exists():
            return json.loads(path.read_text())
        cache = ingredients = None
        if prefix == "eval_base" and self.base_cache is not None:
            from ..base_cache import BaseEvalCache, cache_ingredients

            cache = BaseEvalCache(self.base_cache)
            ingredients = cache_ingredients(self.config, self.task, str(self.backbone.device))
            if cache.fetch(ingredients, self.run_dir):
                summary = json.loads(path.read_text())
                summary["cached"] = str(cache.entry(ingredients))
                return summary
        t0 = time.perf_counter()
        from accelerate.utils import gather_object

        result = evaluate(self.backbone, self.task, self.eval_cfg, self.config["model"]["eval_steps"],
                          progress=lambda stage, done, total: self.progress("eval", (f"{prefix} {stage}", done, total)),
                          process_index=self.acc.process_index, num_processes=self.acc.num_processes,
                          gather_object=gather_object)
        result.summary["seconds"]["total"] = time.perf_counter() - t0
        if cost is not None:
            result.summary["cost"] = dict(cost)
            for row in result.rows:
                row.update({f"cost_{k}": v for k, v in cost.items()})
        if self.acc.is_main_process:
            write_eval(self.run_dir, result, self.task.spec.format, prefix=prefix,
                       grid_prompts=self.eval_cfg.grid_prompts)
            if cache is not None:
                cache.store(ingredients, self.run_dir)
        return result.summary

    def _dev_eval(self, iterations_done: int, path: Path) -> dict[str, Any]:
        """Score the dev split (:func:`~alignbench.evaluation.dev_config`) with the EMA weights after
        ``iterations_done`` iterations and append one row to ``dev.jsonl``: the overall value of every
        reward key, the per-tag values (``tags``), LGMD, cosine diversity, Vendi and seconds."""
        from ..evaluation import dev_config

        cfg = dev_config(self.eval_cfg)
        with self.ema.swapped():
            from accelerate.utils import gather_object

            result = evaluate(self.backbone, self.task, cfg, self.config["model"]["eval_steps"],
                              progress=lambda stage, done, n: self.progress("eval", (f"dev {stage}", done, n)),
                              process_index=self.acc.process_index, num_processes=self.acc.num_processes,
                              gather_object=gather_object)
        m = result.summary["metrics"]
        row = {"iteration": iterations_done, **m["overall"],
               "tags": {t: v for t, v in m.items() if t != "overall"},
               "n_images": result.summary["n_images"], "lgmd": result.summary["lgmd"],
               "cosine_diversity": result.summary["cosine_diversity"], "vendi": result.summary["vendi"],
               "seconds": sum(result.summary["seconds"].values())}
        self.dev_rows.append(row)
        if self.acc.is_main_process:
            write_jsonl(path, self.dev_rows)
        return row

    # ------------------------------------------------------------------------------ the loop
    def _over_processes(self, values: list[float], reduction: str) -> list[float]:
        """``values`` summed (``"sum"``) or averaged (``"mean"``) over the processes of an
        ``accelerate launch``; unchanged with one process."""
        if self.acc.num_processes == 1:
            return [float(v) for v in values]
        t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=self.acc.device)
        return [float(v) for v in self.acc.reduce(t, reduction=reduction).cpu()]

    def _gather(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` [n, ...] of every process concatenated in process order, on the CPU; ``t`` itself with
        one process."""
        if self.acc.num_processes == 1:
            return t
        return self.acc.gather(t.to(self.acc.device)).cpu().to(t.dtype)

    def _check(self, iteration: int, name: str, value: torch.Tensor | float) -> None:
        t = torch.as_tensor(value)
        if not bool(torch.isfinite(t).all()):
            bad = t[~torch.isfinite(t)].flatten()[0].item() if t.numel() > 1 else t.item()
            done = self.start_iteration_done
            raise NonFiniteError(f"iteration {iteration}: non-finite {name} ({bad}); run stopped. The last checkpoint "
                                 f"(after {done} iteration(s)) in {self.run_dir / 'checkpoint'} is intact")

    def iteration(self, it: int) -> dict[str, Any]:
        """Run iteration ``it`` (0-based) and return its metrics row."""
        t_start = time.perf_counter()
        proto, c, bb = self.protocol, self.algo.config, self.backbone
        progress = Progress(it, proto.iterations)
        # two streams per (seed, iteration): the prompts come from their own, so that every algorithm
        # trains on the same prompts in the same order for one seed (matched protocol, specs/algorithms.md
        # §6), whatever random numbers its plan draws; the plan and the rollout noise use the other
        chosen = np.random.default_rng(np.random.SeedSequence([self.seed, 2, it])).choice(
            len(self.train_prompts), proto.prompts_per_iteration, replace=proto.prompt_replacement,
            p=self.prompt_p)
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, 1, it]))
        plan = self.algo.plan(progress, rng)
        self.algo.check_plan(plan)  # every iteration: a plan must keep the protocol's group size
        norm = plan.normalized()
        root_seeds = rng.integers(0, 2**62, size=(len(chosen), norm.n_roots)).tolist()
        noise_key = int(rng.integers(0, 2**62))
        mine = list(range(self.acc.process_index, len(chosen), self.acc.num_processes))
        records = [self.train_prompts[int(chosen[i])] for i in mine]
        embeds = bb.encode_prompts([r["prompt"] for r in records])
        nfe0 = bb.nfe
        shape = bb.latent_shape

        def sde_noise(p: int, step: int, path: tuple[int, ...]) -> torch.Tensor:
            # ξ of one child, seeded by (iteration key, the prompt's place in the iteration, step, branch
            # path): the same whichever process samples that prompt, so an N-process run draws the
            # noises of a one-process run (the path's length is in the key because SeedSequence
            # ignores trailing zeros: [.., 3] and [.., 3, 0] give the same state)
            if proto.antithetic and path[-1] % 2 == 1 and norm.steps[step].fanout > 1:
                # mirrored siblings: children 2j and 2j + 1 of a branch point draw ξ and −ξ
                return -sde_noise(p, step, (*path[:-1], path[-1] - 1))
            state = np.random.SeedSequence([noise_key, mine[p], step, len(path), *path]).generate_state(1, np.uint64)[0]
            return torch.randn(shape, generator=torch.Generator("cpu").manual_seed(int(state >> 1)))

        rollout = execute(bb, plan, embeds, [root_seeds[i] for i in mine], noise_fn=sde_noise,
                          reduction=c.logprob_reduction, batch_size=proto.rollout_batch)
        self._check(it, "log-prob", rollout.log_prob)
        t_rollout = time.perf_counter()

        images = (bb.decode(rollout.leaves).clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        scores: dict[str, list[torch.Tensor]] = {k: [] for k in self.reward.keys}
        for p, rec in enumerate(records):  # rewards per group
            idx = (rollout.leaf_prompt == p).nonzero().flatten().tolist()
            out = self.reward.score([images[i] for i in idx], [rec["prompt"]] * len(idx), [rec] * len(idx))
            for k in scores:
                scores[k].append(out[k].float())
        score_t = {k: torch.cat(v) for k, v in scores.items()}
        total = sum(w * score_t[k] for k, w in self.weights.items())
        self._check(it, "reward", total)
        feats = self.features(images) if self.features is not None else None
        rewards = Rewards(total, score_t, rollout.leaf_prompt.clone(), self.weights, feats)
        adv = self.algo.advantages(rollout, rewards, progress)
        self._check(it, "advantage", adv)
        t_reward = time.perf_counter()

        self._plan_memory(rollout, embeds)
        upd: list[dict[str, float]] = []
        grad_norms = []
        reference_cache: dict = {}  # μ_ref per edge batch, shared by this iteration's inner updates
        for u in range(c.inner_updates):
            self.optimizer.zero_grad(set_to_none=True)
            with self.acc.autocast():
                st = accumulate_gradients(bb, self.algo, rollout, embeds, adv, reuse_old=(u == 0),
                                          backward=self.acc.backward, reference_state=self.reference_state,
                                          reference_cache=reference_cache)
            self._check(it, "loss", st["loss"])
            if self.acc.num_processes > 1:
                for p in self.params:
                    if p.grad is not None:
                        p.grad = self.acc.reduce(p.grad, reduction="mean")
            gn = self.acc.clip_grad_norm_(self.params, c.grad_clip)
            self._check(it, "gradient norm", gn)
            grad_norms.append(float(gn))
            self.optimizer.step()
            self.scheduler.step()
            self.ema.step()
            upd.append(st)
        t_update = time.perf_counter()
        reference_reset = False
        if self.reference_state is not None:
            self.steps_since_reset += c.inner_updates
            # one decision for all processes: the KL averaged over them, so their references stay equal
            mean_kl = self._over_processes([float(np.mean([s["kl"] for s in upd]))], "mean")[0]
            if self.algo.reset_reference({"kl": mean_kl}, self.steps_since_reset):
                self.reference_state, self.steps_since_reset, reference_reset = bb.lora_state(), 0, True

        from ..metrics.diversity import lgmd

        groups = [rollout.leaves[rollout.leaf_prompt == g] for g in rollout.leaf_prompt.unique()]
        train_lgmd = float(np.mean([lgmd(z) for z in groups if z.shape[0] > 1])) if groups else float("nan")
        reward_all = self.acc.gather(total.to(self.acc.device)).cpu()
        adv_all = self.acc.gather(adv.detach().float().to(self.acc.device)).cpu()
        # with several processes: counts are summed over them, per-update statistics averaged
        nfe, nfe_rollout, trained_edges, leaves = self._over_processes(
            [bb.nfe - nfe0, rollout.nfe, rollout.x.shape[0], rollout.leaves.shape[0]], "sum")
        loss, clip_frac, approx_kl, ratio_mean, kl, train_lgmd = self._over_processes(
            [float(np.mean([s[k] for s in upd])) for k in ("loss", "clip_frac", "approx_kl", "ratio_mean", "kl")]
            + [train_lgmd], "mean")
        row: dict[str, Any] = {
            "iteration": it,
            "prompt_indices": [int(i) for i in chosen],  # into the training prompts, all processes
            "reward_mean": float(reward_all.mean()), "reward_std": float(reward_all.std(unbiased=False)),
            **{f"reward_{k}": float(self.acc.gather(v.float().to(self.acc.device)).mean()) for k, v in score_t.items()},
            "lgmd_train": train_lgmd,
            "adv_mean": float(adv_all.mean()), "adv_std": float(adv_all.std(unbiased=False)),
            "adv_min": float(adv_all.min()), "adv_max": float(adv_all.max()),
            "loss": loss, "clip_frac": clip_frac, "approx_kl": approx_kl, "ratio_mean": ratio_mean, "kl": kl,
            "grad_norm": float(np.mean(grad_norms)),
            "lr": float(self.scheduler.get_last_lr()[0]), "kl_beta": c.kl_beta,
            **self.algo.metrics(progress),
            **({"reference_reset": reference_reset} if self.reference_state is not None else {}),
            "nfe": int(nfe), "nfe_rollout": int(nfe_rollout), "trained_edges": int(trained_edges), "leaves": int(leaves),
            # the plan's analytic counts for this iteration's prompts (rollout rows double under CFG)
            "plan_nfe_rollout": int(len(chosen) * plan.nfe_per_prompt() * (2 if bb.true_cfg_scale > 1 else 1)),
            "plan_trained_edges": int(len(chosen) * plan.edges_per_prompt()),
            "seconds": {"rollout": t_rollout - t_start, "reward": t_reward - t_rollout, "update": t_update - t_reward,
                        "total": time.perf_counter() - t_start},
            "peak_memory_mb": _peak_memory_mb(bb.device),
            **({"micro_batch": int(self.algo.config.micro_batch)} if self.protocol.update_memory_gb else {}),
        }
        return row

    def run(self) -> dict[str, Any]:
        """Evaluate the base model (once), train the remaining iterations, evaluate the EMA model.

        Returns:
            ``{"base": eval summary, "final": eval summary, "seconds": {...}}`` (also in ``run.json``).

        Raises:
            NonFiniteError: a non-finite quantity (the checkpoint of the last good iteration is kept).
            KeyboardInterrupt: passed on after the last finished iteration's checkpoint is on disk.
        """
        from ..io import read_jsonl

        done = self.load_checkpoint()
        self.start_iteration_done = done
        metrics_path = self.run_dir / "metrics.jsonl"
        self.rows = [r for r in (read_jsonl(metrics_path) if metrics_path.exists() else []) if r["iteration"] < done]
        t0 = time.perf_counter()
        base = self._evaluate("eval_base")
        t_base = time.perf_counter() - t0
        from ..reporting.trackers import RunTrackers

        trackers = RunTrackers(self.acc, self.run_dir, self.config)
        trackers.log_eval("eval_base", base, self.run_dir / "samples" / "eval_base_grid.png", step=0)
        dev_path = self.run_dir / "dev.jsonl"
        self.dev_rows = [r for r in (read_jsonl(dev_path) if dev_path.exists() else []) if r["iteration"] <= done]
        every, total = self.eval_cfg.dev_every, self.protocol.iterations
        if every and not any(r["iteration"] == done for r in self.dev_rows):
            self._dev_eval(done, dev_path)  # the base model (done = 0), or where a resumed run left off
        self.progress("start", (done, self.protocol.iterations))
        for it in range(done, self.protocol.iterations):
            row = self.iteration(it)
            self.rows.append(row)
            if self.acc.is_main_process:
                write_jsonl(metrics_path, self.rows)
            if every and ((it + 1) % every == 0 or it + 1 == total):
                self._dev_eval(it + 1, dev_path)  # before the checkpoint: a resume never skips a dev point
            if (it + 1) % self.protocol.checkpoint_every == 0 or it + 1 == self.protocol.iterations:
                self.save_checkpoint(it + 1)
                self.start_iteration_done = it + 1
            trackers.log_iteration(row)
            self.progress("iteration", row)
        t1 = time.perf_counter()
        cost = {"seconds_per_iteration": float(np.mean([r["seconds"]["total"] for r in self.rows])),
                "nfe_per_iteration": float(np.mean([r["nfe"] for r in self.rows])),
                "trained_edges_per_iteration": float(np.mean([r["trained_edges"] for r in self.rows])),
                "peak_memory_mb": float(max(r["peak_memory_mb"] for r in self.rows))}
        with self.ema.swapped():
            final = self._evaluate("eval", cost=cost)
        split = {k: float(sum(r["seconds"][k] for r in self.rows)) for k in ("rollout", "reward", "update")}
        summary = {"base": base, "final": final,
                   "seconds": {**split, "eval_base": base["seconds"].get("total", t_base),
                               "eval_final": final["seconds"].get("total", time.perf_counter() - t1),
                               "train_total": float(sum(r["seconds"]["total"] for r in self.rows))},
                   "cost": cost}
        if self.acc.is_main_process:
            write_json(self.run_dir / "summary.json", summary)
        trackers.log_eval("eval", final, self.run_dir / "samples" / "eval_grid.png", step=self.protocol.iterations)
        trackers.finish()
        return summary

