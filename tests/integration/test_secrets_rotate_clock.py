"""`bootforge secrets rotate` judges whether conductors run by the database's clock, not its host's.

On SQLite the database's clock is the clock of the process running the statement, so the check is
of the boundaries (heartbeats written by db_now, in SQL). On PostgreSQL the rotating host's clock is
moved ten minutes either way with faketime: a conductor heartbeating now still stops the rotation,
and one silent for two minutes by the server's clock does not.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import update
from support.service import BOOTFORGE

from bootforge import keys
from bootforge.cli.secrets import _refuse_running
from bootforge.db import secrets
from bootforge.db.clock import db_now
from bootforge.db.engine import Database
from bootforge.db.models import Conductor


async def add_conductors(db: Database, **ages: float | None) -> None:
    """One conductor per name, its heartbeat `age` seconds old by the database's clock (None: offline)."""
    async with db.write() as s, s.begin():
        for name, age in ages.items():
            s.add(
                Conductor(
                    hostname=name,
                    online=age is not None,
                    conductor_group="",
                    hardware_types=[],
                    heartbeat_at=db_now(age or 0.0),
                )
            )


@pytest.fixture
async def sqlite_db(tmp_path: Path) -> AsyncIterator[Database]:
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'bf.sqlite'}")
    await db.migrate()
    try:
        yield db
    finally:
        await db.close()


async def test_sqlite_only_fresh_online_heartbeats_count_as_running(sqlite_db: Database) -> None:
    await add_conductors(sqlite_db, stale=70, stopped=None, fresh_b=50, fresh_a=1)
    with pytest.raises(secrets.SecretKeyRefused) as refused:
        await _refuse_running(sqlite_db, 60)
    assert "conductor(s) fresh_a, fresh_b of this database are running" in str(refused.value)
    assert "stale" not in str(refused.value) and "stopped" not in str(refused.value)
    with pytest.raises(secrets.SecretKeyRefused) as refused:
        await _refuse_running(sqlite_db, 45)
    assert "conductor(s) fresh_a of this database" in str(refused.value)
    # With every heartbeat older than conductor_offline_after, nothing is running.
    await _refuse_running(sqlite_db, 0.5)


def rotate_with_host_clock(
    offset: str, url: str, state: Path, new_key: Path
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BOOTFORGE_")}
    # Only the wall clock moves; asyncio's timers keep the real monotonic clock.
    env["FAKETIME_DONT_FAKE_MONOTONIC"] = "1"
    argv = ["faketime", "-f", offset, BOOTFORGE, "secrets", "rotate", "--new-key", str(new_key)]
    argv += ["--state-dir", str(state), "--database-url", url]
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120, check=False)


@pytest.mark.postgres
async def test_postgresql_rotation_ignores_the_rotating_hosts_clock(
    tmp_path: Path, postgres_fresh_url: str
) -> None:
    if shutil.which("faketime") is None:
        pytest.skip("needs faketime (apt-get install faketime) to move the rotating host's clock")
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    db = Database(postgres_fresh_url)
    try:
        await db.migrate()
        await secrets.open_with_key(db, state / "secret.key")
        await add_conductors(db, peer=0)
    finally:
        await db.close()
    # Ten minutes ahead, the old host-clock check saw the peer's heartbeat as 600 s old: rotated under it.
    ahead = rotate_with_host_clock("+600s", postgres_fresh_url, state, tmp_path / "new.key")
    assert ahead.returncode == 1, ahead.stdout + ahead.stderr
    assert "conductor(s) peer of this database are running" in " ".join(ahead.stderr.split())
    db = Database(postgres_fresh_url)
    try:
        async with db.write() as s, s.begin():
            await s.execute(update(Conductor).values(heartbeat_at=db_now(120)))
    finally:
        await db.close()
    # Ten minutes behind, the old check saw a heartbeat 120 s old by the server as in the future: refused.
    old_fingerprint = keys.load_or_create(state / "secret.key").fingerprint()
    behind = rotate_with_host_clock("-600s", postgres_fresh_url, state, tmp_path / "new.key")
    assert behind.returncode == 0, behind.stdout + behind.stderr
    assert "re-encrypted" in behind.stdout, behind.stdout
    assert keys.load_or_create(state / "secret.key").fingerprint() != old_fingerprint
