"""Group commit for inserts that arrive concurrently (node and port enrolment).

Why: one INSERT through SQLAlchemy costs about 0.1-0.2 ms of CPU before SQLite does anything, and each
transaction adds its BEGIN and COMMIT. When a fleet is enrolled, dozens of requests arrive together;
written one by one, the API saturates a core at a few hundred nodes per second. Rows that arrive
while a batch is being written wait for the next batch, and a batch is one multi-row INSERT (with
RETURNING for the ids) plus one multi-row INSERT of their timeline events, in one transaction.

Errors stay per row: `prepare` may reject single rows (unknown node), and when a batch fails on a
constraint, its rows are retried one per transaction so that only the offending row gets the error.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy import Table, insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from bootforge.db.engine import Database

Row = dict[str, Any]
# Fills in or checks columns of a batch inside its transaction; returns an exception per rejected row.
Prepare = Callable[[AsyncConnection, list[Row]], Awaitable[dict[int, Exception]]]
# Builds the extra rows (timeline events) for inserted rows, which have their ids by then.
Events = Callable[[list[Row]], list[Row]]
# The row as stored (secrets sealed: db/secrets.py); the caller gets its own row back, with its id.
Encode = Callable[[Row], Row]


class BatchInserter:
    def __init__(
        self,
        db: Database,
        table: Table,
        *,
        events_table: Table | None = None,
        events: Events | None = None,
        prepare: Prepare | None = None,
        encode: Encode | None = None,
        max_batch: int = 200,
    ) -> None:
        self.db = db
        self.table = table
        self.events_table = events_table
        self.events = events
        self.prepare = prepare
        self.encode = encode
        self.max_batch = max_batch
        self.statement = insert(table).returning(table.c.id, sort_by_parameter_order=True)
        self._pending: list[tuple[Row, asyncio.Future[Row]]] = []
        self._writer: asyncio.Task[None] | None = None

    async def insert(self, row: Row) -> Row:
        """Insert `row` (with the next batch); returns it with its `id`, or raises its own error."""
        future: asyncio.Future[Row] = asyncio.get_running_loop().create_future()
        self._pending.append((row, future))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        # Let the requests that are already parsed in this loop turn join the first batch.
        await asyncio.sleep(0)
        while self._pending:
            batch, self._pending = self._pending[: self.max_batch], self._pending[self.max_batch :]
            try:
                await self._write(batch)
            except IntegrityError:
                for item in batch:
                    try:
                        await self._write([item])
                    except Exception as exc:
                        _fail(item[1], exc)
            except Exception as exc:
                for _, future in batch:
                    _fail(future, exc)

    async def _write(self, batch: list[tuple[Row, asyncio.Future[Row]]]) -> None:
        rows = [row for row, _ in batch]
        async with self.db.write_conn() as conn:
            rejected = await self.prepare(conn, rows) if self.prepare else {}
            accepted = [(row, fut) for i, (row, fut) in enumerate(batch) if i not in rejected]
            if accepted:
                stored = [self.encode(row) if self.encode else row for row, _ in accepted]
                result = await conn.execute(self.statement, stored)
                for (row, _), new_id in zip(accepted, result.scalars().all(), strict=True):
                    row["id"] = new_id
                if self.events is not None and self.events_table is not None:
                    extra = self.events([row for row, _ in accepted])
                    if extra:
                        await conn.execute(insert(self.events_table), extra)
        # Only now is the transaction committed: answer the requests.
        for i, (row, future) in enumerate(batch):
            if i in rejected:
                _fail(future, rejected[i])
            elif not future.done():
                future.set_result(row)


def _fail(future: asyncio.Future[Row], exc: Exception) -> None:
    if not future.done():
        future.set_exception(exc)
