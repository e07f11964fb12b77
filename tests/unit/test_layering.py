"""Arrows point one way: api -> conductor -> drivers -> db; netboot knows nothing of bootforge.

Walks every module's imports with `ast`, so a new import that turns an arrow around fails here, where
it is cheap to fix, instead of in a circular-import error at start-up. Relative imports are resolved
to the module they name and checked like absolute ones.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2] / "bootforge"

# package -> the bootforge packages it must never import
FORBIDDEN = {
    "netboot": {"api", "conductor", "db", "drivers", "servers", "cli", "lab", "config", "errors"},
    "servers": {"api", "conductor", "db", "drivers", "cli"},
    "drivers": {"api", "conductor", "cli", "servers", "lab"},
    "db": {"api", "conductor", "drivers", "cli", "servers", "netboot"},
    "conductor": {"api", "cli"},
    "api": {"cli", "lab"},
    "images": {"api", "conductor", "cli", "servers", "drivers", "lab"},
    "agent": {"api", "conductor", "cli", "servers", "drivers", "lab", "db", "images", "netboot", "config"},
    "lab": {"api", "conductor", "db", "cli"},
    "ramdisk": {"api", "conductor", "db", "cli", "drivers", "servers", "lab", "images"},
}

# Routes shape replies; the SQL behind them lives in the conductor (conductor/reads.py for GETs).
# What api may take from bootforge.db: the row classes (as types and attribute bags) and the parsers
# of list query parameters, none of which runs a query.
API_DB_ALLOWED = {
    "bootforge.db.models": None,  # any name
    "bootforge.db.queries": {"Page", "MAX_LIMIT", "is_uuid", "parse_bool", "parse_limit", "parse_page"},
}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def resolve(path: Path, node: ast.ImportFrom) -> str:
    """The absolute module an ImportFrom names (`from . import x` in bootforge.agent: bootforge.agent)."""
    if node.level == 0:
        return node.module or ""
    package = module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    base = package[: len(package) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imported(path: Path, *, top_level_only: bool = False) -> Iterator[tuple[str, list[str]]]:
    """(module, names) for each import in the file: names are what a `from` import takes ([] otherwise).

    `top_level_only` skips imports inside functions and `if TYPE_CHECKING:` blocks, which do not run
    while the module loads (so they cannot close an import cycle).
    """
    tree = ast.parse(path.read_text(), str(path))
    nodes: list[ast.AST] = list(_top_level(tree.body)) if top_level_only else list(ast.walk(tree))
    for node in nodes:
        if isinstance(node, ast.ImportFrom):
            yield resolve(path, node), [alias.name for alias in node.names]
        elif isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, []


def _top_level(body: list[ast.stmt]) -> Iterator[ast.stmt]:
    for stmt in body:
        if isinstance(stmt, ast.Import | ast.ImportFrom):
            yield stmt
        elif isinstance(stmt, ast.If) and not _is_type_checking(stmt.test):
            yield from _top_level(stmt.body)
            yield from _top_level(stmt.orelse)
        elif isinstance(stmt, ast.Try):
            for block in (stmt.body, stmt.orelse, stmt.finalbody, *(h.body for h in stmt.handlers)):
                yield from _top_level(block)
        elif isinstance(stmt, ast.With):
            yield from _top_level(stmt.body)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def packages_imported(path: Path) -> set[str]:
    """The bootforge packages (bootforge.<package>...) a file imports, relative imports included."""
    found = set()
    for module, _names in imported(path):
        parts = module.split(".")
        if parts[0] == "bootforge" and len(parts) > 1:
            found.add(parts[1])
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_imports_point_one_way(package: str) -> None:
    offenders = []
    for path in sorted((ROOT / package).rglob("*.py")):
        bad = packages_imported(path) & FORBIDDEN[package]
        if bad:
            offenders.append(f"{path.relative_to(ROOT)} imports {sorted(bad)}")
    assert not offenders, "\n".join(offenders)


def test_api_routes_run_no_sql() -> None:
    offenders = []
    for path in sorted((ROOT / "api").rglob("*.py")):
        for module, names in imported(path):
            where = path.relative_to(ROOT)
            if module.split(".")[0] == "sqlalchemy":
                offenders.append(f"{where} imports {module}")
            elif module == "bootforge.db" or module.startswith("bootforge.db."):
                if module not in API_DB_ALLOWED:
                    offenders.append(f"{where} imports {module}")
                    continue
                allowed = API_DB_ALLOWED[module]
                extra = sorted(set(names) - allowed) if allowed is not None else []
                if extra:
                    offenders.append(f"{where} imports {extra} from {module}")
    assert not offenders, "\n".join(offenders)


def test_relative_imports_are_resolved() -> None:
    """The walk above sees through relative imports (bootforge.agent uses them)."""
    commands = ROOT / "agent" / "commands.py"
    modules = {module for module, _ in imported(commands)}
    assert "bootforge.agent.common" in modules
    init = ast.ImportFrom(module="common", names=[ast.alias("x")], level=1)
    assert resolve(ROOT / "agent" / "__init__.py", init) == "bootforge.agent.common"
    up = ast.ImportFrom(module="db", names=[ast.alias("x")], level=2)
    assert resolve(ROOT / "agent" / "commands.py", up) == "bootforge.db"
    assert "db" in packages_imported_from_source("from ..db import models\n", ROOT / "agent" / "x.py")


def packages_imported_from_source(source: str, path: Path) -> set[str]:
    tree = ast.parse(source)
    return {resolve(path, node).split(".")[1] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}


def import_graph() -> dict[str, set[str]]:
    """Module -> the bootforge modules it imports while loading (top-level imports only)."""
    modules = {module_name(p): p for p in ROOT.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        edges = set()
        for module, names in imported(path, top_level_only=True):
            if module not in modules:
                continue
            # `from pkg import sub` imports the submodule pkg.sub when there is one.
            subs = {f"{module}.{n}" for n in names if f"{module}.{n}" in modules}
            edges |= subs or {module}
            if subs and len(subs) < len(names):
                edges.add(module)  # names from the package itself as well
        graph[name] = edges - {name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iteratively)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_cycle_finder_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles_inside_bootforge() -> None:
    found = cycles(import_graph())
    assert not found, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in found)
