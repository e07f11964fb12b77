"""Work handed to a node's owner through the database: the intent is the node's row, a NOTIFY wakes it.

An API process that is not the owner of a node (conductor/ring.py) does not run its work. It writes
the first state change of the action in one conditional UPDATE, as the owner would, but leaves the
node unlocked: a node in a working state (work.RESUMABLE) or with a target power state, and no
reservation, is work waiting for its owner. In the same transaction it sends a PostgreSQL NOTIFY
naming the owner and the node; the owner LISTENs, claims the node with the conditional UPDATE a
takeover uses (conductor.py _claim: unlocked and unchanged since read, so two claimants cannot both
win) and runs the work. The owner also looks for such nodes every `timeout_check_interval`, so a
notification lost to a dropped connection (or an owner that died right then: its successor on the
ring finds the node the same way) delays the work, nothing more.

Chosen over an internal RPC between processes: the database is already the one thing every process
shares and the place a crash cannot lose (an intent written is an intent kept, across a dead owner
or API process); an RPC would need its own addresses, authentication and retries, and would still
have to write the same row first. Measured in tests/integration/test_roles.py (latency from the
API's answer to the owner's first event) and reported with the #13 work.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from bootforge.db.engine import Database

log = logging.getLogger("bootforge.conductor")

CHANNEL = "bootforge_work"


def notify_payload(owner: str, node_id: int) -> str:
    return f"{node_id} {owner}"


def notify_stmt(owner: str, node_id: int) -> Any:
    """The statement that wakes `owner` for `node_id` when its transaction commits (PostgreSQL)."""
    return select(func.pg_notify(CHANNEL, notify_payload(owner, node_id)))


def parse(payload: str, host: str) -> int | None:
    """The node id of a notification meant for `host` (None for other owners' and malformed ones)."""
    node_id, _, owner = payload.partition(" ")
    if owner != host or not node_id.isdigit():
        return None
    return int(node_id)


class Listener:
    """LISTEN on the work channel over one dedicated connection; `wake(node_id)` for each of ours.

    PostgreSQL only (SQLite runs one process: the owner is the API process itself). A connection
    lost (a database restart) is opened again by `ensure`, which the conductor calls on every poll
    round; work that was notified meanwhile is found by that round's scan.
    """

    def __init__(self, db: Database, host: str, wake: Callable[[int], None]) -> None:
        self.db = db
        self.host = host
        self.wake = wake
        self._conn: AsyncConnection | None = None
        self._raw: Any = None

    @property
    def listening(self) -> bool:
        return self._raw is not None and not self._raw.is_closed()

    async def ensure(self) -> None:
        if self.db.write_engine.dialect.name != "postgresql" or self.listening:
            return
        await self.close()
        conn: AsyncConnection | None = None
        try:
            conn = await self.db.write_engine.connect()
            raw: Any = (await conn.get_raw_connection()).driver_connection
            await raw.add_listener(CHANNEL, self._notified)
        except Exception as exc:
            log.warning("LISTEN %s failed (%s); work handed to this conductor waits for a poll", CHANNEL, exc)
            if conn is not None:
                with contextlib.suppress(Exception):
                    await conn.close()
            return
        self._conn, self._raw = conn, raw

    def _notified(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        node_id = parse(payload, self.host)
        if node_id is not None:
            self.wake(node_id)

    async def close(self) -> None:
        conn, self._conn, self._raw = self._conn, None, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), 5)
