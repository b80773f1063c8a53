"""Tasks: prompts + reward + metrics per model domain (DESIGN.md, "Tasks, models and domains").

A task is a YAML file validated by :class:`TaskSpec`. Built-in tasks are the ``*.yaml`` files of
``alignbench.tasks``; third-party packages register more through the ``alignbench.tasks``
entry-point group (an entry pointing at a :class:`Task`, a :class:`TaskSpec` or a YAML path), and
``--task`` also accepts ``pkg.module:NAME`` or a path to a YAML file.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from . import registry
from .config import StrictModel, load_yaml, validate
from .errors import ConfigError, MetadataError, UserError
from .registry import Registry

DOMAINS = ("shapes", "natural")


class PromptFiles(StrictModel):
    """JSON-lines prompt metadata, paths relative to the task file. ``dev`` (optional) names the
    prompts scored during training for learning curves; without it the dev split is held out of
    ``train`` by :func:`dev_holdout`."""

    train: str
    test: str
    dev: str | None = None


#: the dev split held out of a train split (:func:`dev_holdout`): this share of each tag's prompts,
#: at least 1 (for a tag with ≥ 2 prompts) and at most ``DEV_MAX_PER_TAG``
DEV_FRACTION = 0.1
DEV_MAX_PER_TAG = 8


def dev_holdout(train: list[dict]) -> list[int]:
    """Indices (ascending) of the train records that form the dev split: per tag, the
    ``min(DEV_MAX_PER_TAG, max(1, round(DEV_FRACTION·n)))`` records whose prompts have the smallest
    SHA-256 (a fixed choice that does not depend on file order or on a seed); a tag with a single
    prompt keeps it for training. Records without a ``tag`` count as one tag.

    Returns:
        sorted indices into ``train``; empty when every tag has one prompt.
    """
    import hashlib

    by_tag: dict[Any, list[int]] = {}
    for i, r in enumerate(train):
        by_tag.setdefault(r.get("tag"), []).append(i)
    chosen: list[int] = []
    for idx in by_tag.values():
        if len(idx) < 2:
            continue
        n = min(DEV_MAX_PER_TAG, max(1, round(DEV_FRACTION * len(idx))))
        ranked = sorted(idx, key=lambda i: hashlib.sha256(train[i]["prompt"].encode()).hexdigest())
        chosen.extend(ranked[:n])
    return sorted(chosen)


class HubPrompts(StrictModel):
    """Prompts taken from a Hugging Face dataset at run time (cached after the first download):
    unique values of ``column`` with at least ``min_spaces`` spaces (Flow-GRPO's Pick-a-Pic filter),
    shuffled with ``seed``; the first ``test_size`` are the test split, the rest the train split."""

    dataset: str = Field(description="Hub dataset id")
    revision: str | None = Field(None, description="dataset git revision")
    split: str = Field("train", description="dataset split to read")
    column: str = Field("caption", description="column holding the prompt text")
    min_spaces: int = Field(5, ge=0, description="keep prompts with at least this many spaces")
    test_size: int = Field(2048, ge=1, description="prompts in the test split")
    seed: int = Field(0, description="shuffle seed of the train/test split")


class DomainSpec(StrictModel):
    """What a task means for models of one domain."""

    prompts: PromptFiles | HubPrompts
    reward: str | dict[str, float] = Field(description="registered reward name or pkg.module:Name, or "
                                           "{name: weight} for a weighted sum (multi-reward; key 'total')")
    train_reward: str = Field(description="sub-score of the reward used as the training reward")
    metrics: list[str] = Field(min_length=1, description="sub-scores reported by evaluation")


class TaskSpec(StrictModel):
    """A task definition (one YAML file)."""

    name: str
    description: str
    format: Literal["geneval", "ocr", "prompt"] = Field(description="metadata format of the prompt files "
                                                         "(prompt: records need only a 'prompt' string)")
    domains: dict[Literal[DOMAINS], DomainSpec] = Field(min_length=1)  # type: ignore[valid-type]
    defaults: dict[Literal["protocol", "eval"], dict[str, Any]] = Field(
        default_factory=dict, description="run settings this task needs (e.g. a one-prompt task's "
        "prompts_per_iteration: 1), applied over the model's presets and under --config and --set")


class Task:
    """A loaded task.

    Args:
        spec: the validated definition.
        root: directory the prompt paths are relative to.
    """

    def __init__(self, spec: TaskSpec, root: Path):
        self.spec, self.root = spec, root
        self.name = spec.name
        self.description = spec.description
        self._rewards: dict[str, Any] = {}
        self.reward_options: dict[str, Any] = {}

    def with_reward_options(self, options: dict[str, Any] | None) -> Task:
        """A copy of this task whose rewards are built with ``options`` (the run config's ``reward``
        section, :class:`~alignbench.rewards.pretrained.RewardOptions`); rewards that take no
        options (the embedded world's) accept only the defaults.

        Raises:
            ConfigError: ``options`` has an unknown field or a bad value (names ``reward.<field>``).
        """
        from .rewards.pretrained import RewardOptions

        task = Task(self.spec, self.root)
        task.reward_options = validate(RewardOptions, dict(options or {}), prefix="reward").model_dump()
        return task

    def __repr__(self) -> str:
        return f"Task({self.name!r}, domains={list(self.spec.domains)})"

    def domain(self, domain: str) -> DomainSpec:
        """The task's definition for ``domain``.

        Raises:
            UserError: the task has no entry for that domain (names the domains it supports).
        """
        if domain not in self.spec.domains:
            raise UserError(f"task '{self.name}' has no prompts for domain '{domain}'; it supports models of "
                            f"domain: {', '.join(self.spec.domains)}")
        return self.spec.domains[domain]

    def reward(self, domain: str = "shapes") -> Any:
        """The task's reward for ``domain`` (instantiated once, lazily)."""
        if domain not in self._rewards:
            spec = self.domain(domain).reward
            if isinstance(spec, dict):
                from .rewards.multi import MultiReward

                self._rewards[domain] = MultiReward({
                    name: (make_reward(registry.rewards.get(name), name, self.reward_options), float(w))
                    for name, w in spec.items()})
            else:
                self._rewards[domain] = make_reward(registry.rewards.get(spec), spec, self.reward_options)
        return self._rewards[domain]

    def prompt_file(self, split: str, domain: str = "shapes") -> Path:
        """Path of the ``train`` or ``test`` prompt JSONL of ``domain`` (or ``dev``, when the task
        names a dev file).

        Raises:
            UserError: ``split`` is not train, test or dev (dev only for a task with a dev file), or
                the task has no such domain.
        """
        prompts = self.domain(domain).prompts
        if split == "dev" and isinstance(prompts, PromptFiles) and prompts.dev:
            return self.root / prompts.dev
        if split not in ("train", "test"):
            raise UserError(f"split '{split}' is not valid; allowed: train, test, dev")
        if isinstance(prompts, HubPrompts):
            return hub_prompt_files(prompts)[split]
        return self.root / getattr(prompts, split)

    def has_dev_file(self, domain: str = "shapes") -> bool:
        """Whether the task names its dev prompts (else they are held out of train)."""
        prompts = self.domain(domain).prompts
        return isinstance(prompts, PromptFiles) and prompts.dev is not None

    def prompts(self, split: str, domain: str = "shapes") -> list[dict]:
        """Metadata records of a split (``train``, ``test`` or ``dev``), validated by the domain's
        reward. ``dev`` is the task's dev file, or else the train records that :func:`dev_holdout`
        holds out; ``train`` is always the whole train file (see :meth:`training_prompts`).

        Raises:
            UserError: unknown split; MetadataError: unusable records.
        """
        if split == "dev" and not self.has_dev_file(domain):
            train = self.prompts("train", domain)
            return [train[i] for i in dev_holdout(train)]
        return load_metadata(self.prompt_file(split, domain), self.reward(domain))

    def training_prompts(self, domain: str = "shapes", holdout_dev: bool = True) -> list[dict]:
        """The prompts a run trains on: the train split, less the dev prompts held out of it
        (``holdout_dev`` and no dev file), so that the dev learning curve is never scored on a
        trained prompt."""
        train = self.prompts("train", domain)
        if not holdout_dev or self.has_dev_file(domain):
            return train
        held = set(dev_holdout(train))
        return [r for i, r in enumerate(train) if i not in held]


def prompt_cache_dir() -> Path:
    """Where Hub prompt sets are cached: ``$ALIGNBENCH_CACHE/prompts`` (default ``~/.cache/alignbench``)."""
    import os

    return Path(os.environ.get("ALIGNBENCH_CACHE", Path.home() / ".cache" / "alignbench")) / "prompts"


def hub_prompt_files(spec: HubPrompts) -> dict[str, Path]:
    """The train and test JSON-lines files of a Hub prompt set, downloaded and split on first use.

    Raises:
        UserError: the dataset cannot be loaded (one line naming it) or has no such column.
    """
    import hashlib
    import random

    key = hashlib.sha256(json.dumps(spec.model_dump(), sort_keys=True).encode()).hexdigest()[:16]
    folder = prompt_cache_dir() / key
    files = {"train": folder / "train.jsonl", "test": folder / "test.jsonl"}
    if all(f.is_file() for f in files.values()):
        return files
    try:
        import datasets

        data = datasets.load_dataset(spec.dataset, split=spec.split, revision=spec.revision)
    except Exception as exc:  # noqa: BLE001 - any loader failure becomes one line naming the dataset
        raise UserError(f"prompts: cannot load the dataset '{spec.dataset}' from the Hugging Face Hub "
                        f"({type(exc).__name__}); it needs network access to huggingface.co, or write a task "
                        "YAML with local prompt files (prompts: {train: FILE, test: FILE})") from None
    if spec.column not in data.column_names:
        raise UserError(f"prompts.column: '{spec.column}' is not a column of '{spec.dataset}'; allowed: "
                        f"{', '.join(data.column_names)}")
    texts = sorted({t for t in data[spec.column] if isinstance(t, str) and t.count(" ") >= spec.min_spaces})
    random.Random(spec.seed).shuffle(texts)
    folder.mkdir(parents=True, exist_ok=True)
    for split, part in (("test", texts[: spec.test_size]), ("train", texts[spec.test_size:])):
        tmp = files[split].with_suffix(".tmp")
        tmp.write_text("".join(json.dumps({"prompt": t}) + "\n" for t in part), encoding="utf-8")
        tmp.replace(files[split])
    return files


def make_reward(factory: Any, name: str, options: dict[str, Any] | None = None) -> Any:
    """Instantiate a registered reward: factories with an ``options`` parameter (or
    :class:`~alignbench.rewards.pretrained.PretrainedReward` classes) receive ``options``; others are
    called without arguments and accept only default options.

    Raises:
        ConfigError: non-default options for a reward that takes none (names the field).
    """
    import inspect

    from .rewards.pretrained import RewardOptions

    try:
        takes = "options" in inspect.signature(factory).parameters
    except (TypeError, ValueError):
        takes = False
    if takes:
        return factory(options=options or {})
    defaults = RewardOptions().model_dump()
    for key, value in (options or {}).items():
        if key != "device" and value != defaults.get(key):
            raise ConfigError(f"reward.{key}: reward '{name}' takes no options (it has no weights to load); "
                              "remove the setting")
    return factory()


def load_metadata(path: str | Path, reward: Any = None) -> list[dict]:
    """Read a JSON-lines metadata file; blank lines are skipped.

    Raises:
        MetadataError: ``file:line: ...`` for unreadable files, bad JSON, non-object lines, and
            (when ``reward`` is given) records the reward cannot use, naming the field.
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise MetadataError(f"{path}: cannot read metadata ({exc.strerror})") from None
    records = []
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise MetadataError(f"{where}: invalid JSON ({exc.msg} at column {exc.colno})") from None
        if not isinstance(record, dict):
            raise MetadataError(f"{where}: expected a JSON object, got {type(record).__name__}")
        if reward is not None:
            reward.validate_metadata(record, where)
        records.append(record)
    if not records:
        raise MetadataError(f"{path}: no metadata records")
    return records


def load_task_file(path: str | Path) -> Task:
    """Load and validate a task YAML file (errors name the file and the field path)."""
    path = Path(path)
    try:
        spec = validate(TaskSpec, load_yaml(path))
    except ConfigError as exc:
        msg = str(exc)
        raise ConfigError(msg if msg.startswith(str(path)) else f"{path}: {msg}") from None
    return Task(spec, path.parent)


def _to_task(obj: Any) -> Task:
    if isinstance(obj, Task):
        return obj
    if isinstance(obj, TaskSpec):
        return Task(obj, Path.cwd())
    if isinstance(obj, str | Path):
        return load_task_file(obj)
    raise UserError(f"{obj!r} is not a Task, TaskSpec or task YAML path")


tasks: Registry[Task] = Registry("task", loader=_to_task)
registry.REGISTRIES["task"] = tasks

for _entry in sorted(resources.files("alignbench.tasks").iterdir(), key=lambda p: p.name):
    if _entry.name.endswith(".yaml"):
        tasks.register(_entry.name[: -len(".yaml")], Path(str(_entry)))


def get_task(name: str) -> Task:
    """Resolve ``--task``: a registered name, ``pkg.module:NAME``, or a path to a YAML file."""
    if name.endswith((".yaml", ".yml")):
        if not Path(name).is_file():
            raise UserError(f"task file '{name}' does not exist")
        return load_task_file(name)
    return tasks.get(name)
