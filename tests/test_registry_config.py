"""Registry (names, lazy entries, dotted paths, entry points, suggestions) and strict configs."""

import sys
import textwrap

import pytest
from pydantic import Field

from alignbench.config import StrictModel, apply_overrides, load_yaml, resolve
from alignbench.errors import ConfigError, UnknownNameError, UserError
from alignbench.registry import Registry, registry_for
from alignbench.task import get_task, tasks


class Thing:
    """A thing for tests."""


def test_register_decorator_lazy_and_dotted():
    reg = Registry("widget")
    reg.register("thing")(Thing)
    reg.register("lazy-thing", lazy="alignbench.world.palette:CLASSES")
    assert reg.get("thing") is Thing
    assert reg.get("lazy-thing")[0] == "circle"
    assert reg.get("collections:OrderedDict").__name__ == "OrderedDict"
    assert reg.names() == ["lazy-thing", "thing"]
    assert reg.describe("thing") == "A thing for tests."
    with pytest.raises(ValueError, match="already registered"):
        reg.register("thing", dict)


def test_unknown_name_lists_allowed_and_suggests_closest():
    reg = Registry("widget")
    for name in ("tmpo", "flow_grpo", "mixgrpo"):
        reg.register(name, Thing)
    with pytest.raises(UnknownNameError) as exc:
        reg.get("flowgrpo")
    assert str(exc.value) == "unknown widget 'flowgrpo'; allowed: flow_grpo, mixgrpo, tmpo; did you mean 'flow_grpo'?"
    with pytest.raises(UnknownNameError, match="no widgets are registered"):
        Registry("widget").get("x")


def test_bad_dotted_path_is_a_user_error():
    with pytest.raises(UserError, match="cannot import module 'no_such_pkg.mod'"):
        Registry("widget").get("no_such_pkg.mod:X")
    with pytest.raises(UserError, match="has no attribute 'Nope'"):
        Registry("widget").get("collections:Nope")


def test_entry_point_of_an_installed_distribution(tmp_path, monkeypatch):
    """A fake installed distribution advertising an entry in group alignbench.widgets."""
    (tmp_path / "fakepkg_ab").mkdir()
    (tmp_path / "fakepkg_ab" / "__init__.py").write_text("class Gadget:\n    '''Third-party gadget.'''\n")
    dist = tmp_path / "fakepkg_ab-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: fakepkg-ab\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[alignbench.widgets]\ngadget = fakepkg_ab:Gadget\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    reg = Registry("widget")
    assert "gadget" in reg.names()
    assert reg.get("gadget").__doc__ == "Third-party gadget."
    sys.modules.pop("fakepkg_ab", None)


def test_builtin_tasks_and_rewards_are_registered():
    assert {"geneval", "ocr"} <= set(tasks.names())
    assert {"geneval-shapes", "ocr"} <= set(registry_for("rewards").names())
    with pytest.raises(UnknownNameError, match="did you mean 'geneval'"):
        get_task("genevl")
    with pytest.raises(UnknownNameError, match="allowed: algorithms, models, rewards, tasks"):
        registry_for("widgets")


def test_task_for_missing_domain_names_supported_domains():
    with pytest.raises(UserError, match="task 'pickscore' has no prompts for domain 'shapes'; it supports models "
                                        "of domain: natural"):
        get_task("pickscore").domain("shapes")


# --- config ---------------------------------------------------------------------------------------
class Inner(StrictModel):
    steps: int = Field(10, ge=1)
    eta: float = 0.7


class Outer(StrictModel):
    name: str = "x"
    inner: Inner = Inner()


def test_yaml_duplicate_keys_and_syntax_errors(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("a: 1\na: 2\n")
    with pytest.raises(ConfigError, match="a: duplicate key"):
        load_yaml(p)
    p.write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match=r"c\.yaml:\d+: invalid YAML"):
        load_yaml(p)
    p.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_yaml(p)


def test_resolve_precedence_and_typed_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text(textwrap.dedent("""
        inner:
          steps: 20
    """))
    cfg = resolve(Outer, {"name": "preset"}, config_file=p, overrides=["inner.eta=0.9"])
    assert (cfg.name, cfg.inner.steps, cfg.inner.eta) == ("preset", 20, 0.9)
    cfg = resolve(Outer, config_file=p, overrides=["inner.steps=5"])
    assert cfg.inner.steps == 5


@pytest.mark.parametrize("override, message", [
    ("inner.steps=0", "inner.steps: Input should be greater than or equal to 1 (got 0)"),
    ("inner.stpes=3", "inner.stpes: unknown field"),
    ("inner.eta=fast", "inner.eta: Input should be a valid number"),
    ("inner", "--set 'inner': expected KEY=VALUE"),
    ("name.x=1", "name: is a value"),
])
def test_bad_overrides_name_the_field(override, message):
    with pytest.raises(ConfigError) as exc:
        resolve(Outer, overrides=[override])
    assert str(exc.value).startswith(message)


def test_apply_overrides_creates_nested_keys():
    assert apply_overrides({}, ["a.b.c=[1, 2]"]) == {"a": {"b": {"c": [1, 2]}}}
