"""The contract between SQLAlchemy's aiosqlite dialect and bootforge's inline adapter (db/sqlite_inline.py).

The adapter imitates aiosqlite's Connection and Cursor for the dialect, which reaches into them (even
into private attributes: `_conn`, `_tx`, `_connection`). What the dialect uses is read here from the
installed SQLAlchemy's own source, so an upgrade that calls something new, or calls it differently
(awaited or not, other arguments), fails this test instead of a running bootforge.
"""

from __future__ import annotations

import ast
import asyncio
import inspect
import sqlite3
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path

import aiosqlite
import pytest
import sqlalchemy
from packaging.requirements import Requirement
from sqlalchemy import text
from sqlalchemy.connectors import asyncio as sa_asyncio
from sqlalchemy.dialects.sqlite import aiosqlite as sa_aiosqlite
from sqlalchemy.ext.asyncio import create_async_engine

from bootforge.db import sqlite_inline
from bootforge.db.sqlite_inline import InlineConnection

PYPROJECT = Path(__file__).resolve().parents[3] / "pyproject.toml"

# The dialect's adapter classes, and what their `self._connection` / `self._cursor` stand for.
CONNECTION_CLASSES = ("AsyncAdapt_dbapi_connection", "AsyncAdapt_aiosqlite_connection")
CURSOR_CLASSES = ("AsyncAdapt_dbapi_cursor", "AsyncAdapt_dbapi_ss_cursor")


@dataclass
class Use:
    """How the dialect uses one attribute: read, called (with which arguments), awaited or not."""

    called: list[tuple[int, tuple[str, ...]]] = field(default_factory=list)  # (positional, keywords)
    awaited: set[bool] = field(default_factory=set)
    chained: set[str] = field(default_factory=set)  # attributes read on it (x._connection._conn)


def _sources() -> list[ast.Module]:
    return [ast.parse(Path(m.__file__ or "").read_text()) for m in (sa_asyncio, sa_aiosqlite)]


def _is_awaited(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    """Awaited with `await x` or SQLAlchemy's `await_(x)` (greenlet bridge)."""
    parent = parents.get(node)
    if isinstance(parent, ast.Await):
        return True
    return (
        isinstance(parent, ast.Call)
        and isinstance(parent.func, ast.Name)
        and parent.func.id in ("await_", "await_only", "await_fallback")
        and node in parent.args
    )


def dialect_uses(target: str, classes: tuple[str, ...]) -> dict[str, Use]:
    """Attributes the given dialect classes use on `self.<target>` (the adapted aiosqlite object)."""
    uses: dict[str, Use] = {}
    for module in _sources():
        for cls in (n for n in module.body if isinstance(n, ast.ClassDef) and n.name in classes):
            parents = {child: parent for parent in ast.walk(cls) for child in ast.iter_child_nodes(parent)}
            for node in ast.walk(cls):
                if not (
                    isinstance(node, ast.Attribute)
                    and isinstance(node.value, ast.Attribute)
                    and node.value.attr == target
                    and isinstance(node.value.value, ast.Name)
                    and node.value.value.id == "self"
                ):
                    continue
                use = uses.setdefault(node.attr, Use())
                parent = parents.get(node)
                if isinstance(parent, ast.Call) and parent.func is node:
                    if any(isinstance(a, ast.Starred) for a in parent.args) or any(
                        k.arg is None for k in parent.keywords
                    ):
                        use.called.append((-1, ()))  # *args / **kw: passed through whatever they are
                    else:
                        use.called.append((len(parent.args), tuple(str(k.arg) for k in parent.keywords)))
                    use.awaited.add(_is_awaited(parent, parents))
                elif isinstance(parent, ast.Attribute):
                    use.chained.add(parent.attr)
                elif isinstance(parent, ast.Assign | ast.AugAssign) and node in getattr(
                    parent, "targets", []
                ):
                    use.chained.add("=")  # assigned to: must be settable
    return uses


def _check(adapter: object, real: type, name: str, use: Use) -> list[str]:
    """What is wrong with `adapter` (an instance) for a dialect use that aiosqlite (`real`) satisfies.

    Public names the real aiosqlite class lacks belong to the dialect's generic adapter for other
    drivers (nextset, setinputsizes) and are not part of the contract; private ones (_conn, _tx,
    _connection) are instance attributes of aiosqlite's objects that the aiosqlite dialect reaches
    into, so they always are.
    """
    owner = type(adapter).__name__
    if not name.startswith("_") and not hasattr(real, name):
        return []
    if not hasattr(adapter, name):
        return [f"{owner} has no {name} (the dialect uses it)"]
    problems = []
    attr = inspect.getattr_static(type(adapter), name, None)
    if "=" in use.chained and isinstance(attr, property) and attr.fset is None:
        problems.append(f"{owner}.{name} is read-only; the dialect sets it")
    func = getattr(adapter, name)
    for positional, keywords in use.called:
        if not callable(func):
            problems.append(f"{owner}.{name} is not callable; the dialect calls it")
            continue
        if positional >= 0:
            try:
                inspect.signature(func).bind(*([None] * positional), **dict.fromkeys(keywords))
            except TypeError as e:
                problems.append(
                    f"{owner}.{name} cannot take {positional} positional argument(s) and "
                    f"keywords {list(keywords)}: {e}"
                )
    if use.called and use.awaited == {True} and not inspect.iscoroutinefunction(func):
        problems.append(f"{owner}.{name} must be a coroutine function: the dialect awaits it")
    if use.called and use.awaited == {False} and inspect.iscoroutinefunction(func):
        problems.append(f"{owner}.{name} must not be a coroutine: the dialect does not await it")
    return problems


@pytest.fixture
def inline(tmp_path: Path) -> Iterator[InlineConnection]:
    conn = InlineConnection(sqlite3.connect(tmp_path / "c.db"))
    yield conn
    conn.stop()


def test_the_walk_finds_what_the_dialect_is_known_to_use() -> None:
    # A floor, so that a change in SQLAlchemy's source layout cannot make the walk find nothing.
    connection = dialect_uses("_connection", CONNECTION_CLASSES)
    cursor = dialect_uses("_cursor", CURSOR_CLASSES)
    assert {"commit", "rollback", "close", "isolation_level", "_conn", "_tx", "_connection"} <= set(
        connection
    )
    assert {"execute", "executemany", "fetchall", "description", "rowcount", "lastrowid", "close"} <= set(
        cursor
    )


def test_the_inline_connection_provides_everything_the_dialect_uses(inline: InlineConnection) -> None:
    uses = dialect_uses("_connection", CONNECTION_CLASSES)
    # The dialect makes cursors with connection.cursor() (in _make_new_cursor, on another name).
    uses.setdefault("cursor", Use()).called.append((0, ()))
    uses["cursor"].awaited.add(False)
    problems = [
        p for name, use in sorted(uses.items()) for p in _check(inline, aiosqlite.Connection, name, use)
    ]
    assert not problems, "\n".join(problems)
    # What the private attributes must be: the sqlite3 connection whose isolation_level the dialect
    # sets, a queue of (future, function) pairs, and a value that is truthy while the connection is open.
    assert isinstance(inline._conn, sqlite3.Connection)
    assert callable(inline._tx.put_nowait)
    assert inline._connection is not None
    inline.stop()
    assert not inline._connection


def test_the_inline_cursor_provides_everything_the_dialect_uses(inline: InlineConnection) -> None:
    uses = dialect_uses("_cursor", CURSOR_CLASSES)
    # ... and enters each cursor with `await_(cursor.__aenter__())`.
    uses.setdefault("__aenter__", Use()).called.append((0, ()))
    uses["__aenter__"].awaited.add(True)
    cursor = inline.cursor()
    problems = [p for name, use in sorted(uses.items()) for p in _check(cursor, aiosqlite.Cursor, name, use)]
    assert not problems, "\n".join(problems)


def test_the_dialect_builds_its_connection_through_async_creator() -> None:
    # connect() hands the creator's awaitable to the dialect; stop() exists since aiosqlite 0.22.1
    # and the dialect's force-terminate calls it when present.
    source = inspect.getsource(sa_aiosqlite.AsyncAdapt_aiosqlite_dbapi.connect)
    assert "async_creator_fn" in source
    assert "stop" in inspect.getsource(sa_aiosqlite.AsyncAdapt_aiosqlite_connection)


def test_sqlalchemy_is_pinned_to_the_series_the_contract_was_checked_against() -> None:
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    requirement = Requirement(next(d for d in project["dependencies"] if d.startswith("sqlalchemy")))
    spec = requirement.specifier
    installed = version("sqlalchemy")
    assert installed in spec, f"installed SQLAlchemy {installed} is outside the pin {spec}"
    major, minor = (int(p) for p in sqlalchemy.__version__.split(".")[:2])
    assert f"{major}.{minor + 1}" not in spec, f"the pin {spec} lets the next series in unchecked"


async def test_an_engine_on_the_inline_adapter_runs_commits_sets_isolation_and_terminates(
    tmp_path: Path,
) -> None:
    engine = create_async_engine(
        "sqlite+aiosqlite://", async_creator=sqlite_inline.creator(str(tmp_path / "c.db"))
    )
    try:
        async with engine.begin() as conn:
            await conn.execute(text("CREATE TABLE t (x INTEGER)"))
            await conn.execute(text("INSERT INTO t VALUES (:x)"), [{"x": 1}, {"x": 2}])  # executemany
        async with engine.connect() as conn:
            # Goes through isolation_level's setter and the _tx queue.
            auto = await conn.execution_options(isolation_level="AUTOCOMMIT")
            assert (await auto.execute(text("SELECT count(*) FROM t"))).scalar() == 2
            result = await conn.stream(text("SELECT x FROM t ORDER BY x"))  # server-side cursor
            assert [r[0] async for r in result] == [1, 2]
            inline = (await conn.get_raw_connection()).driver_connection
            assert isinstance(inline, InlineConnection) and inline._connection is not None
            await conn.invalidate()  # the pool terminates the connection through the dialect
            assert inline._connection is None
    finally:
        await engine.dispose()


@pytest.mark.parametrize("name", ["execute", "commit", "rollback", "close", "create_function"])
def test_the_awaited_connection_methods_are_coroutines(name: str) -> None:
    assert asyncio.iscoroutinefunction(getattr(InlineConnection, name))
