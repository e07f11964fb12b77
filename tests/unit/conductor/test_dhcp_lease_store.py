"""DbLeaseStore on SQLite: the lease thread's multi-row upserts (bench/netboot_dhcp.py's bf-sqlite)."""

from __future__ import annotations

import asyncio
import sqlite3
from ipaddress import IPv4Address
from typing import Any

import pytest
from support.service import InProcess

from bootforge.conductor.netboot import DbLeaseStore
from bootforge.netboot.dhcp import LeaseRecord, LeaseState


def record(ip: str, mac: str, expires: float, state: LeaseState = LeaseState.BOUND) -> LeaseRecord:
    return LeaseRecord(IPv4Address(ip), mac, state, expires, None)


async def test_a_batch_over_several_statements_is_one_row_per_address_newest_wins(bf: InProcess) -> None:
    store = DbLeaseStore(bf.conductor.db)
    try:
        assert store._sqlite is not None, "the test database must be a file: the lease thread's path"
        store._rows_per_statement = 2  # five addresses: three statements in one transaction
        await store.commit(
            [
                record("10.9.0.1", "52:54:00:00:00:01", 100.0, LeaseState.OFFERED),
                record("10.9.0.2", "52:54:00:00:00:02", 200.0),
                record("10.9.0.1", "52:54:00:00:00:01", 300.0),  # the same address again: this wins
                record("10.9.0.3", "52:54:00:00:00:03", 400.0),
                record("10.9.0.4", "52:54:00:00:00:04", 500.0),
                record("10.9.0.5", "52:54:00:00:00:05", 600.0),
            ]
        )
        await store.commit([record("10.9.0.2", "52:54:00:00:00:22", 700.0, LeaseState.RELEASED)])
        loaded = sorted(await store.load(), key=lambda r: r.ip)
    finally:
        store.close()
    assert loaded == [
        record("10.9.0.1", "52:54:00:00:00:01", 300.0),
        record("10.9.0.2", "52:54:00:00:00:22", 700.0, LeaseState.RELEASED),
        record("10.9.0.3", "52:54:00:00:00:03", 400.0),
        record("10.9.0.4", "52:54:00:00:00:04", 500.0),
        record("10.9.0.5", "52:54:00:00:00:05", 600.0),
    ]


async def test_a_failed_batch_writes_nothing_and_the_next_one_commits(bf: InProcess) -> None:
    store = DbLeaseStore(bf.conductor.db)
    try:
        assert store._sqlite is not None
        store._rows_per_statement = 1
        bad: Any = None  # mac is NOT NULL: the second statement fails after the first ran
        with pytest.raises(sqlite3.IntegrityError):
            await store.commit([record("10.9.0.1", "52:54:00:00:00:01", 100.0), record("10.9.0.2", bad, 1.0)])
        assert await store.load() == []
        await store.commit([record("10.9.0.3", "52:54:00:00:00:03", 100.0)])
        assert await store.load() == [record("10.9.0.3", "52:54:00:00:00:03", 100.0)]
    finally:
        store.close()


async def test_a_locked_database_is_waited_for_off_the_event_loop(bf: InProcess) -> None:
    """The event loop never waits on SQLite's lock: a batch meeting another writer's transaction goes
    to the lease thread, which commits it once the lock is released; only then does commit return."""
    store = DbLeaseStore(bf.conductor.db)
    other = sqlite3.connect(store._path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        commit = asyncio.create_task(store.commit([record("10.9.0.7", "52:54:00:00:00:07", 100.0)]))
        await asyncio.sleep(0)  # the task's first step (scheduled first) runs: the loop's attempt
        assert store.waited == 1  # the database was locked: the batch went to the thread
        assert not commit.done()  # held while the other writer holds the lock
        other.execute("COMMIT")
        async with asyncio.timeout(30):
            await commit
        assert await store.load() == [record("10.9.0.7", "52:54:00:00:00:07", 100.0)]
        await store.commit([record("10.9.0.8", "52:54:00:00:00:08", 100.0)])
        assert store.waited == 1  # unlocked again: back on the loop
    finally:
        if other.in_transaction:
            other.execute("ROLLBACK")
        other.close()
        store.close()
