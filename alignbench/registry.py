"""One generic registry per kind of plugin (algorithm, task, reward, model).

Modelled on lm-evaluation-harness's registry: entries are registered with a decorator or as lazy
``"module:attr"`` strings (imported on first use), third-party packages add entries through the
entry-point group ``alignbench.<kind>s`` (e.g. ``alignbench.algorithms``), and a dotted path
``pkg.module:Name`` is accepted wherever a registered name is. Unknown names raise
:class:`~alignbench.errors.UnknownNameError`, which lists the known names and suggests the closest.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from importlib.metadata import entry_points
from typing import Any, Generic, TypeVar

from rapidfuzz import process
from rapidfuzz.distance import Levenshtein

from .errors import UnknownNameError, UserError

T = TypeVar("T")


def import_dotted(path: str) -> Any:
    """Import ``"pkg.module:Attr"`` (or ``"pkg.module:Outer.Inner"``) and return the attribute.

    Raises:
        UserError: the module cannot be imported or lacks the attribute (one line, naming ``path``).
    """
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise UserError(f"'{path}' is not a dotted path of the form 'pkg.module:Name'")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise UserError(f"cannot import module '{module_name}' of '{path}': {exc}") from exc
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError as exc:
            raise UserError(f"module '{module_name}' has no attribute '{attr}' (from '{path}')") from exc
    return obj


class Registry(Generic[T]):
    """Names → objects of one kind, with lazy entries, entry points and dotted paths.

    Args:
        kind: singular noun used in messages (``"algorithm"``); the entry-point group is
            ``alignbench.<kind>s``.
        loader: optional hook turning a resolved object into the registered value (e.g. a task
            YAML path into a ``Task``); applied once per name and cached.
        builtins: module that registers the built-in entries, imported on first lookup.
    """

    def __init__(self, kind: str, loader: Callable[[Any], T] | None = None, builtins: str | None = None):
        self.kind = kind
        self.group = f"alignbench.{kind}s"
        self._entries: dict[str, Any] = {}  # name -> object or "module:attr" string (lazy)
        self._resolved: dict[str, T] = {}
        self._loader = loader
        self._entry_points_loaded = False
        self._builtins = builtins

    # -- registration -------------------------------------------------------------------------
    def register(self, name: str, obj: Any = None, *, lazy: str | None = None, replace: bool = False):
        """Register ``obj`` (or a lazy ``"module:attr"``) under ``name``; usable as a decorator.

        Raises:
            ValueError: ``name`` is already registered to something else and ``replace`` is False.
        """
        if lazy is not None:
            self._add(name, lazy, replace)
            return None
        if obj is not None:
            self._add(name, obj, replace)
            return obj

        def decorator(target: Any) -> Any:
            self._add(name, target, replace)
            return target

        return decorator

    def _add(self, name: str, obj: Any, replace: bool) -> None:
        current = self._entries.get(name)
        if current is not None and current is not obj and not replace:
            # Re-registering the lazy target itself (module imported after its lazy entry) is fine.
            if not (isinstance(current, str) and not isinstance(obj, str)):
                raise ValueError(f"{self.kind} '{name}' is already registered")
        self._entries[name] = obj
        self._resolved.pop(name, None)

    def unregister(self, name: str) -> None:
        """Remove ``name`` (used by tests); silently ignores unknown names."""
        self._entries.pop(name, None)
        self._resolved.pop(name, None)

    # -- lookup -------------------------------------------------------------------------------
    def _load_entry_points(self) -> None:
        if self._entry_points_loaded:
            return
        self._entry_points_loaded = True
        if self._builtins:
            importlib.import_module(self._builtins)
        for ep in entry_points(group=self.group):
            if ep.name not in self._entries:
                self._entries[ep.name] = ep.value  # lazy "module:attr"

    def names(self) -> list[str]:
        """All registered names (built-in and from entry points), sorted."""
        self._load_entry_points()
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        self._load_entry_points()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def closest(self, name: str) -> str | None:
        """The known name nearest to ``name`` by normalised edit distance, or ``None``."""
        known = self.names()
        if not known:
            return None
        match = process.extractOne(name, known, scorer=Levenshtein.normalized_similarity)
        return match[0] if match and match[1] >= 0.3 else None

    def get(self, name: str) -> T:
        """Resolve ``name`` (registered name or ``pkg.module:Name``) to its object.

        Raises:
            UnknownNameError: not registered and not a dotted path.
            UserError: a dotted path or lazy entry that cannot be imported.
        """
        if name in self._resolved:
            return self._resolved[name]
        self._load_entry_points()
        if name in self._entries:
            target = self._entries[name]
            if isinstance(target, str):
                target = import_dotted(target)
        elif ":" in name:
            target = import_dotted(name)
        else:
            raise UnknownNameError(
                self.kind, name, self.names(), self.closest(name),
                hint="" if self._entries else f"plugins register through the '{self.group}' entry-point group",
            )
        value = self._loader(target) if self._loader else target
        self._resolved[name] = value
        return value

    def describe(self, name: str) -> str:
        """First line of the entry's docstring (or its ``description`` attribute)."""
        obj = self.get(name)
        text = getattr(obj, "description", None) or (obj.__doc__ or "")
        return text.strip().splitlines()[0] if text.strip() else ""


algorithms: Registry[Any] = Registry("algorithm", builtins="alignbench.algorithms")
models: Registry[Any] = Registry("model", builtins="alignbench.models.spec")
rewards: Registry[Any] = Registry("reward", builtins="alignbench.rewards.builtin")
# tasks get a loader in alignbench.task (YAML → Task); created there to avoid an import cycle.

REGISTRIES: dict[str, Registry[Any]] = {"algorithm": algorithms, "model": models, "reward": rewards}


def registry_for(kind: str) -> Registry[Any]:
    """The registry of ``kind`` (singular or plural: ``task``/``tasks``).

    Raises:
        UnknownNameError: ``kind`` is not one of algorithm, model, reward, task.
    """
    from . import task  # noqa: F401  (creates the task registry)

    singular = kind[:-1] if kind.endswith("s") else kind
    if singular not in REGISTRIES:
        known = sorted(k + "s" for k in REGISTRIES)
        raise UnknownNameError("kind", kind, known, process.extractOne(kind, known)[0])
    return REGISTRIES[singular]
