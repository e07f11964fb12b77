"""Issue #11 finding 14: the database holds BMC passwords, so its files are the owner's alone.

The state directory is 0700, the SQLite database and its WAL/SHM 0600, whatever the umask; files
an older bootforge left readable are tightened at start, with a log line saying so.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

import pytest

from bootforge.cli.serve import build
from bootforge.config import Settings
from bootforge.db.engine import Database


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def lax_umask() -> object:
    old = os.umask(0o022)
    yield
    os.umask(old)


async def test_a_new_state_dir_and_database_are_private(tmp_path: Path, lax_umask: object) -> None:
    state = tmp_path / "state"
    settings = Settings.model_validate(
        {
            "state_dir": state,
            "host": "t",
            "power_sync_interval": 0,
            "timeout_check_interval": 0,
            "conductor_heartbeat_interval": 0,
        }
    )
    db, conductor, _ = await build(settings)
    try:
        files = [state / "bootforge.sqlite", state / "bootforge.sqlite-wal", state / "bootforge.sqlite-shm"]
        assert all(f.exists() for f in files)
        assert mode(state) == 0o700
        assert {f.name: mode(f) for f in files} == {f.name: 0o600 for f in files}
    finally:
        await conductor.stop(grace=1)
        await db.close()


async def test_existing_readable_files_are_tightened_with_a_log_line(
    tmp_path: Path, lax_umask: object, caplog: pytest.LogCaptureFixture
) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o755)
    path = state / "bootforge.sqlite"
    db = Database(f"sqlite+aiosqlite:///{path}")
    await db.migrate()
    await db.close()
    for f in state.iterdir():
        f.chmod(0o644)
    state.chmod(0o755)
    caplog.set_level(logging.WARNING)
    settings = Settings.model_validate(
        {
            "state_dir": state,
            "host": "t",
            "power_sync_interval": 0,
            "timeout_check_interval": 0,
            "conductor_heartbeat_interval": 0,
        }
    )
    db, conductor, _ = await build(settings)
    try:
        assert mode(state) == 0o700
        for f in state.iterdir():
            if f.name.startswith("bootforge.sqlite"):
                assert mode(f) == 0o600, f
        assert "0644" in caplog.text and "bootforge.sqlite" in caplog.text
    finally:
        await conductor.stop(grace=1)
        await db.close()


async def test_a_database_elsewhere_is_private_too(tmp_path: Path, lax_umask: object) -> None:
    path = tmp_path / "new-dir" / "db.sqlite"
    db = Database(f"sqlite+aiosqlite:///{path}")
    try:
        await db.migrate()
        assert mode(path.parent) == 0o700
        assert mode(path) == 0o600
    finally:
        await db.close()
