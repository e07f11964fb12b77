"""aiosqlite's connection interface, executed inline on the event loop's thread.

Why: aiosqlite runs every statement on a worker thread. A bootforge statement takes tens of
microseconds in SQLite, but each hand-off to the thread and back (a queue put, a wake-up, a GIL switch,
an event-loop wake-up) costs more than that, and several times more when the machine is busy: measured
at 9 ms of CPU per API write with aiosqlite. SQLAlchemy's aiosqlite dialect accepts any object with
aiosqlite's interface through `async_creator`, so this module supplies one that simply calls sqlite3.

The trade: a statement blocks the loop while it runs. bootforge's statements are short, WAL readers
never wait for writers, and each process has a single writer connection, so the loop only waits on
SQLite's busy handler when another process holds the write lock on the same file.

The interface is the one SQLAlchemy 2.1's aiosqlite dialect uses (its connectors/asyncio.py adapters,
and `stop()` from aiosqlite 0.22.1 for a forced terminate), private attributes included. pyproject.toml
pins SQLAlchemy to that series; tests/unit/db/test_sqlite_inline_contract.py reads what the installed
dialect calls and checks that this module provides each with a compatible signature.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from typing import Any


class _RunNow:
    """Stands in for aiosqlite's request queue, which SQLAlchemy uses to set the isolation level."""

    def put_nowait(self, item: tuple[asyncio.Future[Any], Callable[[], Any]]) -> None:
        future, fn = item
        try:
            future.set_result(fn())
        except Exception as exc:
            future.set_exception(exc)


class InlineCursor:
    def __init__(self, cursor: sqlite3.Cursor) -> None:
        self._cursor = cursor

    async def __aenter__(self) -> InlineCursor:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._cursor.close()

    async def execute(self, sql: str, parameters: Sequence[Any] | None = None) -> InlineCursor:
        self._cursor.execute(sql, parameters or ())
        return self

    async def executemany(self, sql: str, parameters: Iterable[Sequence[Any]]) -> InlineCursor:
        self._cursor.executemany(sql, parameters)
        return self

    async def fetchone(self) -> Any:
        return self._cursor.fetchone()

    async def fetchmany(self, size: int | None = None) -> list[Any]:
        return self._cursor.fetchmany(size) if size is not None else self._cursor.fetchmany()

    async def fetchall(self) -> list[Any]:
        return self._cursor.fetchall()

    async def close(self) -> None:
        self._cursor.close()

    async def __aiter__(self) -> AsyncIterator[Any]:
        # How the dialect reads a server-side cursor (Connection.stream), as with aiosqlite's.
        for row in self._cursor:
            yield row

    @property
    def description(self) -> Any:
        return self._cursor.description

    @property
    def rowcount(self) -> int:
        return self._cursor.rowcount

    @property
    def lastrowid(self) -> int | None:
        return self._cursor.lastrowid

    @property
    def arraysize(self) -> int:
        return self._cursor.arraysize

    @arraysize.setter
    def arraysize(self, value: int) -> None:
        self._cursor.arraysize = value


class InlineConnection:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self._connection: sqlite3.Connection | None = conn
        self._tx = _RunNow()

    @property
    def isolation_level(self) -> str | None:
        return self._conn.isolation_level

    @isolation_level.setter
    def isolation_level(self, value: str | None) -> None:
        self._conn.isolation_level = value  # type: ignore[assignment]

    def cursor(self) -> InlineCursor:
        return InlineCursor(self._conn.cursor())

    async def execute(self, sql: str, parameters: Sequence[Any] | None = None) -> InlineCursor:
        return await self.cursor().execute(sql, parameters)

    async def commit(self) -> None:
        self._conn.commit()

    async def rollback(self) -> None:
        self._conn.rollback()

    async def create_function(self, *args: Any, **kwargs: Any) -> None:
        self._conn.create_function(*args, **kwargs)

    async def close(self) -> None:
        if self._connection is not None:
            self._connection = None
            self._conn.close()

    def stop(self) -> None:
        if self._connection is not None:
            self._connection = None
            self._conn.close()


def creator(path: str, timeout: float = 30.0) -> Callable[[], Any]:
    """An `async_creator` for create_async_engine("sqlite+aiosqlite://", ...)."""

    async def connect() -> InlineConnection:
        # isolation_level=None: SQLAlchemy's "begin" event issues BEGIN itself (see engine.py).
        conn = sqlite3.connect(path, timeout=timeout, isolation_level=None, check_same_thread=False)
        return InlineConnection(conn)

    return connect
