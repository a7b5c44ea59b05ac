"""The one registry helper behind every plugin kind: it registers, refuses a name taken twice,
names what is available when asked for an unknown name, and imports its built-ins only when
first looked up (so ``--help`` stays fast)."""

from __future__ import annotations

import importlib
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from geoguide.core.registry import Registry


class Widget:
    name = "widget"


class Gadget:
    name = "gadget"


def test_registers_by_attribute_or_given_name_and_returns_the_entry() -> None:
    reg: Registry[type] = Registry("thing")
    assert reg.register()(Widget) is Widget
    assert reg.add(Gadget, "g2") is Gadget
    reg.add(Widget)  # the same entry again (a module imported twice) is fine
    assert reg["widget"] is Widget and reg.get("g2") is Gadget
    assert "widget" in reg and "gadget" not in reg
    assert list(reg) == ["widget", "g2"] and reg.items() == [("widget", Widget), ("g2", Gadget)]  # registration order
    assert reg.names() == ["g2", "widget"] and sorted(reg) == ["g2", "widget"] and len(reg) == 2


def test_a_different_entry_under_a_taken_name_is_refused() -> None:
    reg: Registry[type] = Registry("thing")
    reg.add(Widget)
    other = type("Widget", (), {"name": "widget"})
    with pytest.raises(ValueError, match="thing 'widget' registered twice"):
        reg.register()(other)
    assert reg["widget"] is Widget


def test_an_entry_without_a_name_is_refused() -> None:
    with pytest.raises(TypeError, match="has no name"):
        Registry("thing", key="kind").add(Widget)
    with pytest.raises(TypeError, match="has no name"):
        Registry("thing", key=None).add(Widget)


def test_unknown_name_raises_the_registrys_error_listing_the_names() -> None:
    class SpecError(ValueError):
        pass

    reg: Registry[type] = Registry("thing", error=SpecError)
    reg.add(Widget)
    reg.add(Gadget)
    with pytest.raises(SpecError, match=r"^unknown thing 'nope'; available: gadget, widget$"):
        reg.get("nope")
    with pytest.raises(KeyError):
        reg["nope"]
    labelled: Registry[type] = Registry("thing", unknown="no {kind} in {spec!r} ({name}); try {available}",
                                        label=lambda cls: cls.name.upper())
    labelled.add(Widget)
    with pytest.raises(ValueError, match=r"^no thing in 'x:1' \(x\); try WIDGET$"):
        labelled.get("x", spec="x:1")


@pytest.fixture
def plugin_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A directory on ``sys.path`` for throwaway plugin modules; they leave ``sys.modules`` after."""
    monkeypatch.syspath_prepend(str(tmp_path))
    before = set(sys.modules)
    yield tmp_path
    for name in set(sys.modules) - before:
        del sys.modules[name]


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))


def test_builtins_are_imported_on_the_first_lookup_not_at_import(plugin_dir: Path) -> None:
    _write(plugin_dir / "reg_holder.py", """
        from geoguide.core.registry import Registry
        REG = Registry("widget", builtins=("reg_plugin",))
    """)
    _write(plugin_dir / "reg_plugin.py", """
        from reg_holder import REG

        @REG.register()
        class Blue:
            name = "blue"
    """)
    holder = importlib.import_module("reg_holder")
    assert "reg_plugin" not in sys.modules
    assert holder.REG.get("blue").__name__ == "Blue"
    assert "reg_plugin" in sys.modules


def test_a_package_registry_finds_every_public_module_of_the_package(plugin_dir: Path) -> None:
    _write(plugin_dir / "regpkg" / "__init__.py", """
        from geoguide.core.registry import Registry
        REG = Registry("gadget", package="regpkg")
    """)
    for name in ("one", "two"):
        _write(plugin_dir / "regpkg" / f"{name}.py", f"""
            from regpkg import REG

            @REG.register("{name}")
            class Plugin:
                pass
        """)
    _write(plugin_dir / "regpkg" / "_private.py", "raise AssertionError('private modules are not plugins')\n")
    pkg = importlib.import_module("regpkg")
    assert "regpkg.one" not in sys.modules
    assert pkg.REG.names() == ["one", "two"]


def test_a_builtin_that_fails_to_import_fails_every_lookup(plugin_dir: Path) -> None:
    _write(plugin_dir / "reg_broken.py", "raise ImportError('missing dependency')\n")
    reg: Registry[type] = Registry("thing", builtins=("reg_broken",))
    for _ in range(2):  # not only the first: a half-filled registry must not pass for a full one
        with pytest.raises(ImportError, match="missing dependency"):
            reg.names()


def test_a_lookup_while_another_thread_loads_waits_for_every_builtin(plugin_dir: Path) -> None:
    """Web sessions build backends in threads: none may see a half-loaded registry."""
    _write(plugin_dir / "reg_slow_holder.py", """
        from geoguide.core.registry import Registry
        REG = Registry("widget", builtins=("reg_slow",))
    """)
    _write(plugin_dir / "reg_slow.py", """
        import time
        from reg_slow_holder import REG

        time.sleep(0.3)

        @REG.register("slow")
        class Slow:
            pass
    """)
    reg = importlib.import_module("reg_slow_holder").REG
    with ThreadPoolExecutor(4) as pool:
        found = list(pool.map(lambda _: reg.get("slow").__name__, range(4)))
    assert found == ["Slow"] * 4


def test_importing_the_packages_imports_no_plugin() -> None:
    """The CLI imports these packages to build ``--help``; their plugins (torch, langgraph) wait."""
    code = ("import sys, geoguide.indices.descriptors, geoguide.indices.stores, geoguide.indices.submaps, geoguide.agent.backends, geoguide.agent.policies; "
            "print(sorted(m for m in sys.modules if m.startswith(('geoguide.indices.', 'geoguide.agent.')) and m.split('.')[-1] in "
            "{'clip', 'thumbnail', 'flat', 'kmeans', 'llava', 'offline', 'rules', 'llm', 'toolbox'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[2])
    assert out.stdout.strip() == "[]"


def _registries() -> dict[str, object]:
    from geoguide.agent.backends.registry import BACKENDS
    from geoguide.agent.policies.base import POLICIES
    from geoguide.agent.toolbox import TOOLS
    from geoguide.indices.descriptors.registry import DESCRIPTORS
    from geoguide.indices.stores.registry import STORES
    from geoguide.indices.submaps.registry import SCHEMES

    return {"descriptor": DESCRIPTORS, "store": STORES, "submap scheme": SCHEMES, "backend": BACKENDS,
            "policy": POLICIES, "tool": TOOLS}


@pytest.mark.parametrize(("kind", "builtin"), [
    ("descriptor", "thumbnail"), ("store", "fp16"), ("submap scheme", "country"), ("backend", "none"),
    ("policy", "rules"), ("tool", "submit_location"),
])
def test_every_plugin_kind_uses_the_helper(kind: str, builtin: str) -> None:
    reg = _registries()[kind]
    assert isinstance(reg, Registry) and reg.kind == kind
    assert builtin in reg and builtin in sorted(reg)


def test_finding_the_backends_imports_no_torch():
    """Backends are found by listing their package: the lookup must not pull in torch (a module
    that needs it at its top is private, ``_geoclip_model``, and is not scanned)."""
    import subprocess
    import sys

    code = ("import sys; from geoguide.agent.backends import available_backends; names = available_backends(); "
            "print(','.join(names), 'torch' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       cwd=Path(__file__).resolve().parents[2])
    names, torch_loaded = r.stdout.split()
    assert {"openai", "openai-compatible", "llava", "replay", "none", "geoclip", "clip-zeroshot"} <= set(names.split(","))
    assert torch_loaded == "False", r.stderr


def test_the_dataset_loaders_use_the_registry_helper():
    from geoguide.indices.photosets import DATASETS

    assert isinstance(DATASETS, Registry) and "csv" in DATASETS


def test_every_registry_loads_whole_with_no_name_twice():
    """A lookup imports only the entry's own module, so a name registered in two modules would
    not be noticed there: the full load of every registry, made here, is where it is caught."""
    from geoguide.agent.backends.registry import BACKENDS
    from geoguide.agent.policies.base import POLICIES
    from geoguide.agent.toolbox import TOOLS
    from geoguide.indices.descriptors.registry import DESCRIPTORS
    from geoguide.indices.photosets import DATASETS
    from geoguide.indices.stores.registry import STORES
    from geoguide.indices.submaps.registry import SCHEMES

    for registry in (BACKENDS, POLICIES, TOOLS, DESCRIPTORS, DATASETS, STORES, SCHEMES):
        assert registry.names(), registry.kind  # load() raises on a name registered twice
        for name, home in registry.homes.items():  # a homes hint points where the entry really is
            assert registry.get(name).__module__ == f"{registry.package}.{home}", (registry.kind, name)


def test_a_dotted_or_odd_name_is_an_unknown_entry_not_a_crash():
    """'api.openai.com' or 'llama.cpp' as a backend prefix: the registry's own message, not a
    ModuleNotFoundError from looking for a module of that name."""
    from geoguide.agent.backends.errors import BackendConfigError
    from geoguide.agent.backends.registry import BACKENDS

    for name in ("llama.cpp", "api.openai.com", "a/b", ""):
        assert name not in BACKENDS
        with pytest.raises(BackendConfigError, match="unknown backend"):
            BACKENDS.get(name)
