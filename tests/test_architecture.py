"""The house: the core's floors, each importing only the floors below it, and no import cycle anywhere.

Every import counts, wherever it is written: at the top of a module, inside a function, or under
``if TYPE_CHECKING:`` (a type-only import is still a dependency a reader has to follow).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.helpers.paths import ROOT

# nsfw_core's floors, top to bottom: a module may import its own floor's modules (without a cycle)
# and any floor below its own, never one above.  Names are dotted prefixes under nsfw_core.
FLOORS: list[tuple[str, ...]] = [
    ("__main__", "cli", "scan"),
    ("client",),
    ("http",),
    ("context",),
    ("metrics",),
    ("classify", "jobs"),
    ("intake",),
    ("calibration",),
    ("state",),
    ("inference",),
    ("images",),
    ("access", "admission", "ratelimit", "userinfo"),
    ("base",),
]
TREES = ("nsfw_core", "nsfw_ui", "pages", "bench", "tests")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    found = {}
    for tree in TREES:
        for path in (ROOT / tree).rglob("*.py"):
            if any(p in ("original", "peers", "prototypes") for p in path.parts):
                continue
            found[_module_name(path)] = path
    for path in (ROOT / "app.py", ROOT / "streamlit_app.py"):
        found[path.stem] = path
    return found


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules ``name`` imports, at any depth of its code."""
    is_package = path.name == "__init__.py"
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            # "from package import module" depends on the module (the package's __init__ runs for any
            # import of one of its modules, however it is spelled); "from module import name" on the module
            targets = [f"{module}.{a.name}" if f"{module}.{a.name}" in modules else module for a in node.names]
        else:
            continue
        for target in targets:
            if name.startswith("bench.") and target not in modules and f"bench.{target}" in modules:
                target = f"bench.{target}"  # bench's scripts import each other from their folder
            while target and target not in modules:  # a name imported from a module: the module
                target = target.rpartition(".")[0]
            if target and target != name:
                out.add(target)
    return out


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0

    def visit(v: str) -> None:
        nonlocal counter
        work = [(v, iter(sorted(graph.get(v, ()))))]
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        component.append(w)
                        if w == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
            elif child not in index:
                index[child] = low[child] = counter
                counter += 1
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(sorted(graph.get(child, ())))))
            elif child in on_stack:
                low[node] = min(low[node], index[child])

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _floor(module: str) -> int | None:
    if not module.startswith("nsfw_core."):
        return None
    rest = module[len("nsfw_core."):]
    for level, names in enumerate(FLOORS):
        if any(rest == n or rest.startswith(n + ".") for n in names):
            return level
    return None


def test_there_is_no_import_cycle_anywhere():
    assert _cycles(_graph()) == []


def test_every_core_module_has_a_floor():
    unplaced = [m for m in _graph() if m.startswith("nsfw_core.") and _floor(m) is None]
    assert unplaced == []


def test_a_request_walks_down_the_floors_never_back_up():
    upward = sorted((source, target) for source, targets in _graph().items() for target in targets
                    if (a := _floor(source)) is not None and (b := _floor(target)) is not None and b < a)
    assert upward == []


def test_the_core_imports_nothing_outside_it():
    graph = _graph()
    outside = sorted((s, t) for s, ts in graph.items() if s.startswith("nsfw_core") for t in ts
                     if not t.startswith("nsfw_core"))
    assert outside == []


@pytest.mark.parametrize("package", ["base", "images", "inference", "state", "calibration", "http"])
def test_each_floor_is_a_package_with_a_docstring(package):
    init = ROOT / "nsfw_core" / package / "__init__.py"
    assert ast.get_docstring(ast.parse(init.read_text())), f"nsfw_core/{package}/__init__.py says what it holds"


def test_at_most_fifteen_modules_at_the_top_of_the_core():
    top = sorted(p.name for p in (ROOT / "nsfw_core").glob("*.py"))
    assert len(top) <= 15, top


def test_the_cycle_finder_finds_cycles():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_the_floor_check_sees_an_upward_import():
    base, http = _floor("nsfw_core.base.settings"), _floor("nsfw_core.http.app")
    assert base is not None and http is not None and base > http  # base is below http
