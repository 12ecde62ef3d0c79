"""The layers of `proxy/` hold: every import points down, and no two modules import each other.

Our own AST check, no dependency: every `.py` under the package is parsed and every import
counts, wherever it is (module level, inside a function, under `if TYPE_CHECKING:`). Relative
imports are resolved against the importing module's package; `from pkg import name` is an edge
to the submodule `pkg.name` when there is one, else to `pkg`.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# What each layer may import, besides itself. A module belongs to the longest layer name that
# is a prefix of its dotted name. `ANYTHING` marks the top: the command and the pytest plugin.
ANYTHING = frozenset({"*"})
CONTRACT: Mapping[str, frozenset[str]] = {
    "proxy": frozenset(),  # the package's __init__: `__version__`, importable from anywhere
    "proxy.errors": frozenset(),
    "proxy.files": frozenset(),
    "proxy.core": frozenset({"proxy.errors"}),
    "proxy.config": frozenset({"proxy.core", "proxy.errors"}),
    "proxy.store": frozenset({"proxy.core", "proxy.errors"}),
    "proxy.cassettes": frozenset({"proxy.core", "proxy.store", "proxy.errors", "proxy.config"}),
    "proxy.forward_proxy": frozenset({"proxy.core", "proxy.errors", "proxy.config"}),
    "proxy.serve": frozenset(
        {
            "proxy.core",
            "proxy.store",
            "proxy.cassettes",
            "proxy.forward_proxy",
            "proxy.config",
            "proxy.errors",
        }
    ),
    # The web UI reads the store and the running proxy's state; `serve.app` wires it in.
    "proxy.ui": frozenset(
        {
            "proxy.core",
            "proxy.store",
            "proxy.cassettes",
            "proxy.serve",
            "proxy.config",
            "proxy.errors",
        }
    ),
    # The app itself sits above the UI it serves (the rest of `serve` sits below it).
    "proxy.serve.app": frozenset(
        {
            "proxy.core",
            "proxy.store",
            "proxy.cassettes",
            "proxy.forward_proxy",
            "proxy.serve",
            "proxy.ui",
            "proxy.config",
            "proxy.errors",
        }
    ),
    "proxy.cli": ANYTHING,
    "proxy.pytest_plugin": ANYTHING,
    "proxy.__main__": frozenset({"proxy.cli"}),
}
# The root package holds only `__version__`, and `proxy.files` only the atomic write: anything
# may import them, and they import nothing of ours.
IMPORTABLE_BY_ALL = frozenset({"proxy", "proxy.files"})

# Back-edges tolerated while a layout change is under way: (module, imported). It is empty,
# and must stay so: fix the import instead of listing it here.
PENDING_BACK_EDGES: frozenset[tuple[str, str]] = frozenset()


@dataclass(frozen=True, order=True)
class Edge:
    module: str
    imported: str
    path: str  # the importing file, relative to the package's parent
    line: int

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.module} imports {self.imported}"


@dataclass(frozen=True)
class Report:
    forbidden: list[Edge]  # imports that point up (or sideways) against the contract
    cycles: list[list[Edge]]  # each an import cycle: module -> ... -> back to the first

    def messages(self) -> list[str]:
        out = [f"{edge}: forbidden ({layer_rule(edge.module)})" for edge in self.forbidden]
        for cycle in self.cycles:
            out.append("import cycle: " + " -> ".join(f"[{edge}]" for edge in cycle))
        return out


def module_name(package_dir: Path, file: Path) -> str:
    parts = [package_dir.name, *file.relative_to(package_dir).with_suffix("").parts]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def find_modules(package_dir: Path) -> dict[str, Path]:
    return {module_name(package_dir, f): f for f in sorted(package_dir.rglob("*.py"))}


def imports_of(module: str, file: Path, modules: Iterable[str]) -> Iterator[tuple[str, int]]:
    """(imported module, line) for every import statement in the file, anywhere in it."""
    known = set(modules)
    is_package = file.name == "__init__.py"
    tree = ast.parse(file.read_text(encoding="utf-8"), filename=str(file))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = resolve_from(module, is_package, node.module, node.level)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                yield (sub if sub in known else base), node.lineno


def resolve_from(module: str, is_package: bool, name: str | None, level: int) -> str:
    """The absolute name of `from <level dots><name> import ...` written in `module`."""
    if level == 0:
        assert name is not None
        return name
    package = module.split(".") if is_package else module.split(".")[:-1]
    if level - 1 >= len(package):
        raise ValueError(f"{module}: relative import beyond the top-level package")
    anchor = package[: len(package) - (level - 1)]
    return ".".join([*anchor, name] if name else anchor)


def layer_of(module: str) -> str:
    candidates = [name for name in CONTRACT if module == name or module.startswith(name + ".")]
    if not candidates:
        raise ValueError(f"{module} belongs to no layer: add its layer to CONTRACT")
    return max(candidates, key=len)


def layer_rule(module: str) -> str:
    layer = layer_of(module)
    allowed = CONTRACT[layer]
    if allowed == ANYTHING:
        return f"{layer} may import anything"
    if not allowed:
        return f"{layer} may import nothing of ours"
    return f"{layer} may import only " + ", ".join(sorted({layer, *allowed}))


def allowed(module: str, imported: str) -> bool:
    layer = layer_of(module)
    rule = CONTRACT[layer]
    if rule == ANYTHING or imported in IMPORTABLE_BY_ALL:
        return True
    target = layer_of(imported)
    return target == layer or target in rule


def check(package_dir: Path, tolerated: frozenset[tuple[str, str]] = frozenset()) -> Report:
    """Every import of the package under `package_dir` against CONTRACT, and every cycle.
    `tolerated` (module, imported) pairs are neither reported nor followed."""
    modules = find_modules(package_dir)
    top = package_dir.name
    edges: set[Edge] = set()  # one per statement, however many names it imports
    for module, file in modules.items():
        path = file.relative_to(package_dir.parent).as_posix()
        for imported, line in imports_of(module, file, modules):
            ours = imported == top or imported.startswith(top + ".")
            if ours and imported != module and (module, imported) not in tolerated:
                edges.add(Edge(module, imported, path, line))
    forbidden = sorted(e for e in edges if not allowed(e.module, e.imported))
    return Report(forbidden, find_cycles(sorted(edges)))


def find_cycles(edges: list[Edge]) -> list[list[Edge]]:
    """One concrete cycle for each strongly connected component of more than one module
    (Tarjan's algorithm, then a breadth-first path back to the component's first module)."""
    graph: dict[str, dict[str, Edge]] = {}
    for edge in sorted(edges):
        graph.setdefault(edge.module, {}).setdefault(edge.imported, edge)
        graph.setdefault(edge.imported, {})
    cycles = []
    for component in strongly_connected(graph):
        if len(component) > 1:
            cycles.append(cycle_through(graph, component))
    return sorted(cycles)


def strongly_connected(graph: Mapping[str, Mapping[str, Edge]]) -> list[set[str]]:
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def visit(node: str) -> None:  # recursion depth is bounded by the number of modules
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in graph[node]:
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            components.append(component)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return components


def cycle_through(graph: Mapping[str, Mapping[str, Edge]], component: set[str]) -> list[Edge]:
    start = min(component)
    came_by: dict[str, Edge] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for succ, edge in sorted(graph[node].items()):
                if succ not in component or succ in came_by:
                    continue
                came_by[succ] = edge
                following.append(succ)
        if start in came_by:
            break
        frontier = following
    path = [came_by[start]]
    while path[0].module != start:
        path.insert(0, came_by[path[0].module])
    return path


def test_layers_point_down_and_nothing_is_circular() -> None:
    messages = check(ROOT / "proxy", tolerated=PENDING_BACK_EDGES).messages()
    assert not messages, "\n".join(messages)


def write(root: Path, files: Mapping[str, str]) -> None:
    for name, text in files.items():
        file = root / name
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_text(text, encoding="utf-8")


def test_the_check_finds_an_upward_import_and_a_cycle(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "proxy/__init__.py": "",
            "proxy/errors.py": "class Oops(Exception): ...\n",
            "proxy/core/__init__.py": "from . import sse\n",
            "proxy/core/records.py": "from ..errors import Oops\n",
            "proxy/core/sse.py": (
                "from proxy.errors import Oops\n\n\ndef split():\n"
                "    from proxy.serve import app  # the one edge pointing up\n"
            ),
            "proxy/serve/__init__.py": "",
            "proxy/serve/app.py": "from proxy.core import records\nfrom .pipeline import handle\n",
            "proxy/serve/pipeline.py": (
                "from typing import TYPE_CHECKING\n\nif TYPE_CHECKING:\n"
                "    from proxy.serve.relay import Relay\n\ndef handle(): ...\n"
            ),
            "proxy/serve/relay.py": "import proxy.serve.pipeline\nfrom proxy import errors\n",
            "proxy/cli/__init__.py": "",
            "proxy/cli/main.py": "from proxy.serve.app import handle\n",
            "proxy/__main__.py": "from proxy.cli.main import main\n",
        },
    )
    report = check(tmp_path / "proxy")
    assert report.forbidden == [Edge("proxy.core.sse", "proxy.serve.app", "proxy/core/sse.py", 5)]
    assert report.cycles == [
        [
            Edge("proxy.serve.pipeline", "proxy.serve.relay", "proxy/serve/pipeline.py", 4),
            Edge("proxy.serve.relay", "proxy.serve.pipeline", "proxy/serve/relay.py", 1),
        ]
    ]
    assert report.messages() == [
        "proxy/core/sse.py:5: proxy.core.sse imports proxy.serve.app: forbidden"
        " (proxy.core may import only proxy.core, proxy.errors)",
        "import cycle: [proxy/serve/pipeline.py:4: proxy.serve.pipeline imports"
        " proxy.serve.relay] -> [proxy/serve/relay.py:1: proxy.serve.relay imports"
        " proxy.serve.pipeline]",
    ]
    # Tolerating the upward edge silences it, and nothing else.
    upward = frozenset({("proxy.core.sse", "proxy.serve.app")})
    tolerated = check(tmp_path / "proxy", tolerated=upward)
    assert tolerated.forbidden == []
    assert tolerated.cycles == report.cycles


def test_relative_imports_resolve_against_the_importing_package() -> None:
    assert resolve_from("proxy.core.sse", False, "records", 1) == "proxy.core.records"
    assert resolve_from("proxy.core", True, "records", 1) == "proxy.core.records"
    assert resolve_from("proxy.core.sse", False, "errors", 2) == "proxy.errors"
    assert resolve_from("proxy.core.sse", False, None, 2) == "proxy"
    assert resolve_from("proxy.core.sse", False, "proxy.x", 0) == "proxy.x"
