"""Alembic migrations on SQLite and on a real PostgreSQL: head matches the models, and they go both ways."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from bootforge.db.engine import downgrade, make_engine, migrate
from bootforge.db.models import Base


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
async def engine(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'migrations.sqlite'}"
    else:
        url = request.getfixturevalue("postgres_fresh_url")
    eng = make_engine(url)
    yield eng
    await eng.dispose()


MIGRATE_IN_CHILD = """
import asyncio, sys
from bootforge.db.engine import make_engine, migrate

async def main(url):
    engine = make_engine(url)
    try:
        await migrate(engine)
    finally:
        await engine.dispose()

asyncio.run(main(sys.argv[1]))
"""


def _tables(conn: Connection) -> set[str]:
    return set(inspect(conn).get_table_names())


def _schema_diff(conn: Connection) -> list[Any]:
    ctx = MigrationContext.configure(conn, opts={"compare_type": True})
    return list(compare_metadata(ctx, Base.metadata))


def _columns(conn: Connection, table: str) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in inspect(conn).get_columns(table)}


async def test_upgrade_on_empty_database_matches_models(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        assert await conn.run_sync(_tables) == set()
    await migrate(engine)
    async with engine.connect() as conn:
        tables = await conn.run_sync(_tables)
        diff = await conn.run_sync(_schema_diff)
    assert tables == set(Base.metadata.tables) | {"alembic_version"}
    assert diff == [], f"migrations and models disagree: {diff}"


async def test_upgrade_is_idempotent(engine: AsyncEngine) -> None:
    # Every `bootforge serve` start migrates; a second run on a current schema must change nothing.
    await migrate(engine)
    await migrate(engine)
    async with engine.connect() as conn:
        assert await conn.run_sync(_schema_diff) == []


async def test_downgrade_to_base_then_upgrade_again(engine: AsyncEngine) -> None:
    await migrate(engine)
    await downgrade(engine, "base")
    async with engine.connect() as conn:
        left = await conn.run_sync(_tables)
        # The comparison is live: an empty schema differs from the models.
        assert len(await conn.run_sync(_schema_diff)) >= len(Base.metadata.tables)
    # Alembic keeps its (now empty) version table; every table of ours is gone.
    assert left <= {"alembic_version"}
    await migrate(engine)
    async with engine.connect() as conn:
        assert await conn.run_sync(_tables) == set(Base.metadata.tables) | {"alembic_version"}
        assert await conn.run_sync(_schema_diff) == []


async def test_timestamps_are_timezone_aware(engine: AsyncEngine) -> None:
    # Heartbeat ages and wait-state timeouts subtract these from an aware "now".
    await migrate(engine)
    async with engine.connect() as conn:
        nodes = await conn.run_sync(_columns, "nodes")
    if engine.dialect.name == "postgresql":
        assert nodes["provision_updated_at"]["type"].timezone is True
        assert nodes["created_at"]["type"].timezone is True
    assert nodes["reservation"]["nullable"] is True
    assert nodes["maintenance"]["nullable"] is False


async def test_conductors_starting_together_migrate_once(engine: AsyncEngine) -> None:
    # Several `bootforge serve` processes started at once on one fresh database each migrate at start;
    # none may fail because another one is creating the same tables.
    url = engine.url.render_as_string(hide_password=False)
    children = [
        await asyncio.create_subprocess_exec(
            sys.executable, "-c", MIGRATE_IN_CHILD, url, stderr=asyncio.subprocess.PIPE
        )
        for _ in range(4)
    ]
    errors = [(await asyncio.wait_for(child.communicate(), 120))[1] for child in children]
    assert [child.returncode for child in children] == [0] * 4, errors
    async with engine.connect() as conn:
        assert await conn.run_sync(_schema_diff) == []
