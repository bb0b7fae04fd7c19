"""The import graph of ``streamgw`` points down only: no cycles between packages, no upward arrows.

Every module is parsed (not imported) and every ``import`` in it counts, also one inside a function or
under ``TYPE_CHECKING``: a lazy import still couples the two modules, it only hides the coupling.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import streamgw

ROOT = Path(streamgw.__file__).parent

#: what each module belongs to: a subpackage by its name, top-level modules as listed here
TOP_LEVEL = {
    "streamgw": "streamgw",  # the package itself: a version string
    "streamgw.errors": "errors",
    "streamgw.config": "config",
    "streamgw.config_schema": "config",
    "streamgw.config_loader": "config",
    "streamgw.config_presets": "config",
    "streamgw.timers": "timers",
    "streamgw.cli": "entry",
    "streamgw.supervisor": "entry",
    "streamgw.asgi": "entry",
    "streamgw.__main__": "entry",
}

#: a unit may import units of its own rank or lower (never one higher), and no two units import each
#: other (``test_no_cycles_between_packages``).  errors and config are leaves shared by everything.
RANKS = {
    "streamgw": 0,
    "errors": 0,
    "core": 1,
    "config": 2,
    "timers": 2,  # many things timed by one trio task (streamgw.timers.DueHeap): the store, engine and server
    "providers": 3,
    "transport": 3,
    "store": 3,
    "control": 3,  # managed keys, limits, usage: the shared state of [control]
    "engine": 4,
    "app": 5,
    "serving": 6,  # hypercorn, and the composition root (streamgw.serving.main)
    "entry": 7,  # the command line, the worker supervisor, streamgw.asgi
    "testing": 7,  # mock upstreams and harnesses for tests and benchmarks
}

#: third-party libraries whose internals ``streamgw.serving`` patches: nothing else may import them
SERVING_ONLY = ("hypercorn", "priority")


@dataclass(frozen=True)
class Edge:
    """``source`` imports ``target`` at ``line``."""

    source: str
    target: str
    line: int

    def __str__(self) -> str:
        return f"{self.source}:{self.line} imports {self.target}"


def module_name(path: Path) -> str:
    """``streamgw/engine/run.py`` -> ``streamgw.engine.run``; a package's ``__init__`` is the package."""
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(ROOT.rglob("*.py"))}


def unit(module: str) -> str:
    """The package (or group of top-level modules) ``module`` belongs to."""
    if module in TOP_LEVEL:
        return TOP_LEVEL[module]
    return module.split(".")[1]


def imported(module: str, path: Path) -> Iterator[tuple[str, int]]:
    """Every module name ``module`` imports (absolute, relative resolved), with its line."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:
                # ``from streamgw import supervisor`` imports a module, ``from streamgw.x import y`` a name
                yield (f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base), node.lineno


def internal_edges() -> list[Edge]:
    """Every import of one streamgw module by another."""
    edges = []
    for module, path in MODULES.items():
        for target, line in imported(module, path):
            if target == "streamgw" or target.startswith("streamgw."):
                edges.append(Edge(module, _existing(target), line))
    return edges


def _existing(name: str) -> str:
    """The longest prefix of ``name`` that is a module of ours (``a.b.Name`` -> ``a.b``)."""
    while name not in MODULES:
        name = name.rpartition(".")[0]
    return name


def unit_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {name: set() for name in RANKS}
    for edge in internal_edges():
        source, target = unit(edge.source), unit(edge.target)
        if source != target:
            graph[source].add(target)
    return graph


def test_every_module_has_a_rank() -> None:
    assert {unit(module) for module in MODULES} <= set(RANKS)


def test_no_upward_imports() -> None:
    upward = [f"{edge} ({unit(edge.source)} -> {unit(edge.target)})" for edge in internal_edges()
              if RANKS[unit(edge.target)] > RANKS[unit(edge.source)]]
    assert upward == []


def test_no_cycles_between_packages() -> None:
    graph = unit_graph()
    cycles = []
    for start in graph:
        stack = [(start, [start])]
        while stack:
            node, path = stack.pop()
            for nxt in graph[node]:
                if nxt == start:
                    if start == min(path):  # each cycle once, from its smallest unit
                        cycles.append(" -> ".join([*path, start]))
                elif nxt not in path:
                    stack.append((nxt, [*path, nxt]))
    assert cycles == []


def test_the_checks_see_an_upward_import(tmp_path: Path) -> None:
    """The parser finds imports inside functions and relative ones (a check that sees nothing passes)."""
    source = tmp_path / "streamgw" / "store" / "probe.py"
    source.parent.mkdir(parents=True)
    source.write_text("def f():\n    from ..app import routes\n    import streamgw.engine.run\n")
    found = [name for name, _ in imported("streamgw.store.probe", source)]
    assert found == ["streamgw.app.routes", "streamgw.engine.run"]


@pytest.mark.parametrize("library", SERVING_ONLY)
def test_patched_libraries_are_imported_in_serving_only(library: str) -> None:
    outside = [f"{module}:{line}" for module, path in MODULES.items() if unit(module) != "serving"
               for name, line in imported(module, path) if name == library or name.startswith(f"{library}.")]
    assert outside == []


def test_config_names_every_installed_dialect() -> None:
    """``config.PROVIDER_TYPES`` is written out (the config may not ask the registry): it must agree."""
    from streamgw.config import PROVIDER_TYPES
    from streamgw.providers.registry import DIALECT_MODULES, LOCAL_MODULES, dialects, local_providers

    assert set(dialects()) == set(DIALECT_MODULES) and set(local_providers()) == set(LOCAL_MODULES)
    assert set(PROVIDER_TYPES) == {*DIALECT_MODULES, *LOCAL_MODULES}


def test_the_engine_never_names_a_provider_type() -> None:
    """Dialects and in-process providers register in ``providers.registry``; the engine asks it, by type."""
    from streamgw.config import PROVIDER_TYPES

    named = [f"{path.name}:{node.lineno} {node.value!r}" for module, path in MODULES.items()
             if unit(module) == "engine" for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
             if isinstance(node, ast.Constant) and node.value in PROVIDER_TYPES]
    assert named == []


def module_cycles() -> list[list[str]]:
    """The strongly connected groups of two or more modules in the module import graph (Tarjan)."""
    graph: dict[str, set[str]] = {module: set() for module in MODULES}
    for edge in internal_edges():
        if edge.source != edge.target:
            graph[edge.source].add(edge.target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for module in graph:
        if module not in index:
            visit(module)
    return groups


def test_no_cycles_between_modules() -> None:
    """Not even a lazy or type-only import closes a loop: each module can be read from the bottom up."""
    assert module_cycles() == []
