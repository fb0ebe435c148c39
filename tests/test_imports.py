"""Lazy, layered imports: what ``import densemtl.api`` loads, the import graph of the package
(no cycle, each package importing only the layers below it), and registries that list and match
names without importing their modules, while plugins still reach them.

The graph is read from the source (``ast``): every ``import`` and ``from ... import`` statement,
inside functions too (an import deferred into a function still runs, and a cycle through it is a
cycle: the two the package once had went through such imports), but not those under
``if TYPE_CHECKING:``.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import types
from collections.abc import Iterator
from pathlib import Path

import pytest

from densemtl.registry import Registry

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "densemtl"

#: The layers of densemtl, lowest first: a module may import its own package and the layers below
#: its own, never one above (the CLI at the top, the errors at the bottom).
LAYERS: list[set[str]] = [
    {"errors"},
    {"launch", "atomic", "knobs"},
    {"plugin_faults"},
    {"plugin_contracts", "distributed", "paths", "registry"},
    {"plugins", "tasks", "balancing"},
    {"methods", "metrics", "models", "data", "engine"},
    {"report", "api", "testing"},
    {"training"},
    {"runs", "bench"},
    {"cli"},
    {"__main__", "__init__"},
]


def _run(code: str, env: dict[str, str] | None = None) -> str:
    """``code`` in a fresh interpreter with this checkout's densemtl; its stdout."""
    env = {**os.environ, **(env or {})}
    env["PYTHONPATH"] = os.pathsep.join([str(SRC), *([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])])
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return r.stdout


# -- what importing loads -------------------------------------------------------------------------
def test_the_api_loads_a_few_modules_and_no_architecture_dataset_bench_or_training() -> None:
    modules = json.loads(_run("import sys, json, densemtl.api\nprint(json.dumps(sorted(sys.modules)))"))
    loaded = [m for m in modules if m.startswith("densemtl")]
    assert len(loaded) <= 30, loaded
    heavy = ("densemtl.models", "densemtl.data", "densemtl.bench", "densemtl.training", "densemtl.cli")
    assert not [m for m in loaded if m.startswith(heavy)], loaded
    assert "torchvision" not in modules


def test_import_densemtl_stays_light() -> None:
    loaded = json.loads(_run("import sys, json, densemtl\nprint(json.dumps(sorted(sys.modules)))"))
    assert [m for m in loaded if m.startswith("densemtl")] == ["densemtl", "densemtl.errors"]
    assert "torch" not in loaded


# -- the import graph -----------------------------------------------------------------------------
def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _statements(node: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement under ``node``, functions included, ``if TYPE_CHECKING:`` blocks not."""
    found: list[ast.Import | ast.ImportFrom] = []
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.Import | ast.ImportFrom):
            found.append(child)
        elif isinstance(child, ast.If) and _is_type_checking(child):
            for other in child.orelse:
                found += _statements(ast.Module(body=[other], type_ignores=[]))
        else:
            found += _statements(child)
    return found


def _targets(module: str, node: ast.Import | ast.ImportFrom, modules: dict[str, Path]) -> set[str]:
    """The densemtl modules ``node`` (in ``module``) imports: ``from pkg import sub`` is ``pkg.sub``
    when that is a module, else ``pkg``."""
    names: list[str] = []
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:
            package = module if modules[module].name == "__init__.py" else module.rpartition(".")[0]
            for _ in range(node.level - 1):
                package = package.rpartition(".")[0]
            base = f"{package}.{base}" if base else package
        names = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
    out = set()
    for name in names:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        if name.startswith("densemtl"):
            out.add(name)
    return out - {module}


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {
        m: {t for node in _statements(ast.parse(path.read_text(encoding="utf-8"))) for t in _targets(m, node, modules)}
        for m, path in modules.items()
    }


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_graph_is_read_as_python_imports_it() -> None:
    """The reader sees what a cycle is made of: deferred imports, relative ones, ``from pkg import mod``."""
    code = (
        "from . import b\n"
        "if TYPE_CHECKING:\n    from densemtl import c\nelse:\n    import densemtl.d\n"
        "def f():\n    from densemtl.a import x\n"
    )
    modules = {m: Path(f"{m}.py") for m in ("densemtl.a", "densemtl.b", "densemtl.c", "densemtl.d")}
    found = set().union(*(_targets("densemtl.a", n, modules) for n in _statements(ast.parse(code))))
    assert found == {"densemtl.b", "densemtl.d"}  # not c (type checking only), not a itself
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle() -> None:
    assert _cycles(_graph()) == []


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_each_package_imports_only_the_layers_below() -> None:
    layer = {name: i for i, names in enumerate(LAYERS) for name in names}
    graph = _graph()
    unplaced = sorted({_package(m) for m in graph} - set(layer))
    assert not unplaced, f"place these in LAYERS (tests/test_imports.py): {unplaced}"
    upward = [
        f"{m} imports {t}"
        for m, targets in sorted(graph.items())
        for t in sorted(targets)
        if _package(m) != _package(t) and t != "densemtl" and layer[_package(t)] >= layer[_package(m)]
    ]  # ``from densemtl import __version__``: the package itself is imported before any of its modules
    assert upward == []
    lower = [m for m in graph if layer[_package(m)] < layer["training"]]
    assert "densemtl.data.writer" in lower and "densemtl.report.plots" in lower and "densemtl.plugins" in lower


# -- registries: names without imports, plugins at the boundary -----------------------------------
REGISTRIES = "from densemtl import data, methods, models, tasks\n"
REGISTRIES += "REGS = [data.DATASETS, methods.METHODS, models.MODELS, tasks.TASKS]\n"


def test_registries_list_and_match_names_without_importing_their_modules() -> None:
    code = REGISTRIES + (
        "import sys, json\n"
        "names = [r.available() for r in REGS]\n"
        "found = [methods.METHODS.canonical('Nash_MTL'), models.MODELS.find('SegNet'), data.DATASETS.find('x')]\n"
        "before = sorted(m for m in sys.modules if m.startswith('densemtl'))\n"
        "tiny = models.MODELS.tiny('segnet')\n"
        "after = sorted(m for m in sys.modules if m.startswith('densemtl'))\n"
        "print(json.dumps([names, found, before, tiny, after]))"
    )
    names, found, before, tiny, after = json.loads(_run(code))
    assert "synthetic" in names[0] and "nashmtl" in names[1] and "segnet" in names[2] and "seg" in names[3]
    assert found == ["nashmtl", "segnet", None]
    from densemtl import balancing, data, models, tasks

    entries = {f"densemtl.data.{m}" for m in data.BUILT_IN.values()}
    entries |= {f"{p.__name__}.{n}" for p in (balancing, models, tasks) for n in p.BUILT_IN}
    assert not entries & set(before), sorted(entries & set(before))
    assert tiny == {"width": 0.125, "depth_stages": 3}  # looked up: its module, and no other entry's, imported
    assert entries & set(after) == {"densemtl.models.segnet"}


def test_every_module_of_a_registry_package_registers_what_its_table_declares() -> None:
    """Importing every module of the four packages registers nothing undeclared, and every declared
    name is registered by its module, under that ``name`` (one style for every registry)."""
    code = REGISTRIES + (
        "import importlib, json, pkgutil\nfrom densemtl import balancing\n"
        "declared = [r.available() for r in REGS]\n"
        "for p in (data, models, tasks, balancing):\n"
        "    for info in pkgutil.iter_modules(p.__path__):\n"
        "        importlib.import_module(f'{p.__name__}.{info.name}')\n"
        "named = [[getattr(r.get(n), 'name', None) == n for n in r.available()] for r in REGS]\n"
        "print(json.dumps([declared, [r.available() for r in REGS], named]))"
    )
    declared, registered, named = json.loads(_run(code))
    assert registered == declared
    assert all(all(row) for row in named), named


class _Home(types.ModuleType):
    THINGS: Registry[object]


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Registry[object]]:
    """A registry in a module of its own, whose entry ``a`` is declared in ``lazythings_a``."""
    things: Registry[object] = Registry("thing")
    module = _Home("lazythings_home")
    module.THINGS = things
    monkeypatch.setitem(sys.modules, "lazythings_home", module)
    (tmp_path / "lazythings_a.py").write_text(
        "from lazythings_home import THINGS\n\n\n@THINGS.register('a', tiny={'k': 1})\ndef a(k: int = 0) -> object:\n"
        "    return ('a', k)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    things.lazy("a", "lazythings_a")
    things.lazy("b", "json")  # a module that registers nothing
    yield things
    sys.modules.pop("lazythings_a", None)


def test_a_declared_name_imports_its_module_when_looked_up(home: Registry[object]) -> None:
    assert home.available() == ["a", "b"] and home.find("A") == "a"
    assert "lazythings_a" not in sys.modules
    saved = dict(home._factories)  # a test's copy of the registry, taken before the import
    assert home.create("a") == ("a", 0) and home.tiny("a") == {"k": 1}
    assert home.get("a").name == "a" and home.name_of(home.get("a")) == "a"  # type: ignore[attr-defined]
    home._factories = saved  # put back: the module stays imported, the entry is found again
    assert home.get("a").name == "a" and home.tiny("a") == {"k": 1}  # type: ignore[attr-defined]
    with pytest.raises(RuntimeError, match="'b' is declared in json, which registers no such name"):
        home.get("b")


def test_a_declared_name_is_taken(home: Registry[object]) -> None:
    """A plugin registering a built-in name whose module is not imported yet is refused all the same."""
    with pytest.raises(ValueError, match="thing 'a' registered twice"):
        home.register("a")(lambda: None)
    with pytest.raises(ValueError, match="thing 'b' registered twice"):
        home.lazy("B", "json")


def test_register_names_the_object_once() -> None:
    things: Registry[object] = Registry("thing")

    class Base:
        pass

    class Child(Base):
        pass

    things.register("base")(Base)
    things.register("child")(Child)  # inherits Base's name: gets its own
    things.register("again")(Base)  # a second name for a registered class: it keeps the first
    assert (Base.name, Child.name) == ("base", "child")  # type: ignore[attr-defined]
    assert things.name_of(Base) == "base" and things.name_of(Child) == "child" and things.name_of(object) is None


def test_plugins_load_at_the_boundary_not_at_a_lookup(tmp_path: Path) -> None:
    """A registry lookup imports no plugin; an entry point and ``$DENSEMTL_IMPORTS`` are loaded where
    a run is built (here :func:`densemtl.plugins.load_pending`, what a command, a Trainer and a
    worker call first), and ``load_plugins`` imports a module: each appears like a built-in."""
    (tmp_path / "lazyplug.py").write_text(
        "from densemtl import models\n\n\n@models.register('lazyarch')\ndef lazyarch(task_channels: dict) -> None:\n"
        "    return None\n"
    )
    (tmp_path / "envplug.py").write_text(
        "from densemtl import methods\nmethods.register('envmethod')(methods.METHODS.get('ew'))\n"
    )
    (tmp_path / "byhand.py").write_text(
        "from densemtl import tasks\ntasks.register('byhand')(tasks.TASKS.get('seg'))\n"
    )
    info = tmp_path / "lazyplug-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: lazyplug\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[densemtl.plugins]\nlazyplug = lazyplug\n")
    code = REGISTRIES + (
        "import json\nfrom densemtl import plugins\n"
        "first = [models.MODELS.find('lazyarch'), methods.METHODS.find('envmethod')]\n"
        "plugins.load_pending()\nplugins.load_plugins(['byhand'])\n"
        "arch = models.MODELS.get('lazyarch')\n"
        "print(json.dumps([first, arch.name, 'lazyarch' in models.available(), methods.METHODS.find('envmethod'), "
        "methods.METHODS.get('ew').name, tasks.TASKS.find('byhand'), plugins.loaded()]))"
    )
    first, name, listed, env_method, ew, by_hand, loaded = json.loads(
        _run(code, {"PYTHONPATH": str(tmp_path), "DENSEMTL_IMPORTS": "envplug"})
    )
    assert first == [None, None]  # looked up before the boundary: not there, and nothing imported
    assert name == "lazyarch" and listed and env_method == "envmethod" and ew == "ew" and by_hand == "byhand"
    assert loaded == ["lazyplug = lazyplug", "envplug", "byhand"]
