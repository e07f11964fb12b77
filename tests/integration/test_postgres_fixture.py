"""The throwaway PostgreSQL server fixture answers on 127.0.0.1 with password auth."""

from __future__ import annotations

import asyncpg
import psycopg
import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine
from support.postgres import PostgresServer

pytestmark = pytest.mark.postgres


async def test_select_1_via_asyncpg(postgres_url: str) -> None:
    url = make_url(postgres_url)
    assert url.drivername == "postgresql+asyncpg"
    assert url.host == "127.0.0.1"
    conn = await asyncpg.connect(
        host=url.host,
        port=url.port,
        user=url.username,
        password=url.password,
        database=url.database,
    )
    try:
        assert await conn.fetchval("SELECT 1") == 1
    finally:
        await conn.close()


async def test_wrong_password_is_refused(postgres_url: str) -> None:
    url = make_url(postgres_url)
    with pytest.raises(asyncpg.InvalidPasswordError):
        await asyncpg.connect(
            host=url.host, port=url.port, user=url.username, password="wrong", database=url.database
        )


async def test_sqlalchemy_async_engine(postgres_url: str) -> None:
    engine = create_async_engine(postgres_url)
    try:
        async with engine.connect() as conn:
            assert (await conn.execute(text("SELECT current_database()"))).scalar() == "bootforge_test"
    finally:
        await engine.dispose()


def test_sync_url_via_psycopg(postgres_sync_url: str) -> None:
    url = make_url(postgres_sync_url)
    assert url.drivername == "postgresql+psycopg"
    with psycopg.connect(
        host=url.host, port=url.port, user=url.username, password=url.password, dbname=url.database
    ) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


async def test_fresh_database_is_empty_and_separate(
    postgres_fresh_url: str, postgres_url: str, postgres_server: PostgresServer
) -> None:
    fresh = make_url(postgres_fresh_url)
    assert fresh.database != make_url(postgres_url).database
    conn = await asyncpg.connect(
        host=fresh.host, port=fresh.port, user=fresh.username, password=fresh.password,
        database=fresh.database,
    )  # fmt: skip
    try:
        tables = await conn.fetchval(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'"
        )
        assert tables == 0
    finally:
        await conn.close()
    assert postgres_server.logfile.exists()
