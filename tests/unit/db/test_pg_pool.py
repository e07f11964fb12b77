"""db.engine on PostgreSQL without pool_pre_ping: reads in autocommit (one round trip each), writes in
transactions, and a pooled connection the server closed (a restart, a failover, an admin's
pg_terminate_backend) replaced at checkout instead of failing the next piece of work."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from bootforge.db import engine as engine_module
from bootforge.db.engine import Database

pytestmark = pytest.mark.postgres


async def _xids(session: Any) -> tuple[int, int]:
    # pg_current_xact_id() gives the statement's transaction an id: two statements in one
    # transaction share it, two autocommit statements each get their own.
    one = await session.scalar(text("SELECT pg_current_xact_id()::text::bigint"))
    two = await session.scalar(text("SELECT pg_current_xact_id()::text::bigint"))
    return int(one), int(two)


async def test_reads_run_in_autocommit_and_writes_in_one_transaction(postgres_fresh_url: str) -> None:
    db = Database(postgres_fresh_url)
    try:
        async with db.read() as s:
            first, second = await _xids(s)
        assert first != second, "a read session ran its statements inside one transaction"
        async with db.write() as s:
            first, second = await _xids(s)
            await s.commit()
        assert first == second, "a write session's statements ran in separate transactions"
        # The isolation level of a read does not stick to the pooled connection a write gets next.
        for _ in range(3):
            async with db.read() as s:
                await s.scalar(text("SELECT 1"))
            async with db.write() as s:
                first, second = await _xids(s)
                await s.rollback()
            assert first == second
    finally:
        await db.close()


async def test_a_connection_the_server_closed_is_replaced_at_checkout(postgres_fresh_url: str) -> None:
    db = Database(postgres_fresh_url)
    admin = Database(postgres_fresh_url)
    try:
        async with db.write_engine.connect() as conn:
            pid = await conn.scalar(text("SELECT pg_backend_pid()"))
            driver = (await conn.get_raw_connection()).driver_connection
        assert db.write_engine.pool.checkedin() == 1  # type: ignore[attr-defined]
        async with admin.write_engine.connect() as conn:
            assert await conn.scalar(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        # Wait for the event the pool relies on: the driver has read the server's close.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while not driver.is_closed():
            assert loop.time() < deadline, "asyncpg never noticed the terminated connection"
            await asyncio.sleep(0.01)
        # Both a read and a write get a live connection, with no error and no retry by the caller.
        async with db.read() as s:
            assert await s.scalar(text("SELECT pg_backend_pid()")) != pid
        async with db.write() as s:
            assert await s.scalar(text("SELECT pg_backend_pid()")) != pid
            await s.commit()
    finally:
        await db.close()
        await admin.close()


async def test_a_session_stalled_inside_a_transaction_frees_its_locks(
    postgres_fresh_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A conductor frozen mid-transaction (SIGSTOP) must not hold its peers' takeover UPDATEs behind
    its row locks for as long as it is frozen: the server ends the session after IDLE_IN_TRANSACTION."""
    monkeypatch.setattr(engine_module, "IDLE_IN_TRANSACTION", 1.0)
    stalled = Database(postgres_fresh_url)
    peer = Database(postgres_fresh_url)
    try:
        async with peer.write_engine.begin() as conn:
            await conn.execute(text("CREATE TABLE held (id int PRIMARY KEY, owner text)"))
            await conn.execute(text("INSERT INTO held VALUES (1, 'stalled')"))
        async with stalled.write_engine.connect() as conn:
            await conn.execute(text("SELECT owner FROM held WHERE id = 1 FOR UPDATE"))
            # The stalled session sends nothing more; the peer's UPDATE waits for its lock, which
            # only the server's timeout releases (bounded here: it must come well before 30 s).
            async with peer.write_engine.begin() as other:
                updated = await asyncio.wait_for(
                    other.execute(text("UPDATE held SET owner = 'peer' WHERE id = 1")), 30
                )
                assert updated.rowcount == 1
            # The stalled session, continued, finds its connection ended (its work is fenced anyway).
            with pytest.raises(DBAPIError):
                await conn.execute(text("SELECT 1"))
    finally:
        await stalled.close()
        await peer.close()
