"""health_listen: GET /healthz and /livez of `serve` processes that have no API, probed with curl.

A `serve --role conductor` (SQLite, then PostgreSQL stopped under it) and a `serve --role netboot`
each answer on their own loopback listener; the checks of a stale heartbeat and an unregistered
conductor run against a SQLite database directly.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update
from support.postgres import running_postgres
from support.service import BOOTFORGE, TEST_HARDWARE_TYPES, free_port

from bootforge.config import Settings
from bootforge.db.clock import db_now
from bootforge.db.engine import Database
from bootforge.db.models import Conductor
from bootforge.observe.health import HealthCheck

pytestmark = pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl (apt-get install curl)")


def curl(url: str, *extra: str) -> tuple[int, dict[str, Any] | None]:
    """(status, JSON body) from curl, a client bootforge did not write; status 0 when it cannot connect."""
    proc = subprocess.run(
        ["curl", "-s", "-m", "10", "-w", "\n%{http_code}", *extra, url],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    body, _, code = proc.stdout.rpartition("\n")
    status = int(code) if code.isdigit() else 0
    return status, (json.loads(body) if body.strip().startswith("{") else None)


def wait_for(url: str, want: int, timeout: float, proc: subprocess.Popen[bytes], log: Path) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    seen: tuple[int, dict[str, Any] | None] = (0, None)
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"serve exited: {log.read_text()[-2000:]}"
        seen = curl(url)
        if seen[0] == want and seen[1] is not None:
            return seen[1]
        time.sleep(0.2)
    raise AssertionError(
        f"{url} did not answer {want} in {timeout} s (last: {seen}): {log.read_text()[-2000:]}"
    )


@contextlib.contextmanager
def serve(tmp_path: Path, role: str, **env_extra: str) -> Iterator[tuple[str, subprocess.Popen[bytes], Path]]:
    """A `serve --role ROLE` with health_listen on a free loopback port; stopped by its PID."""
    health = f"127.0.0.1:{free_port()}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("BOOTFORGE_")}
    env.update(
        BOOTFORGE_ENABLED_HARDWARE_TYPES=json.dumps(TEST_HARDWARE_TYPES),
        BOOTFORGE_HEALTH_LISTEN=health,
        BOOTFORGE_CONDUCTOR_HEARTBEAT_INTERVAL="0.5",
        BOOTFORGE_CONDUCTOR_OFFLINE_AFTER="5",
        BOOTFORGE_POWER_SYNC_INTERVAL="0",
        **env_extra,
    )
    log = tmp_path / f"serve-{role}.log"
    argv = [BOOTFORGE, "serve", "--state-dir", str(tmp_path / "state"), "--role", role, "--host", f"{role}-1"]
    argv += ["--listen", f"127.0.0.1:{free_port()}"]
    with open(log, "ab") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        yield f"http://{health}", proc, log
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


def test_conductor_process_answers_healthz_and_refuses_other_requests(tmp_path: Path) -> None:
    with serve(tmp_path, "conductor", BOOTFORGE_CONDUCTOR_GROUP="Rack1") as (base, proc, log):
        doc = wait_for(base + "/healthz", 200, 60, proc, log)
        assert doc["role"] == "conductor" and doc["host"] == "conductor-1", doc
        assert doc["conductor_group"] == "rack1", doc
        assert doc["database"]["reachable"] is True and doc["database"]["time"], doc
        beat = doc["heartbeat"]
        assert beat["online"] is True and 0 <= beat["age"] <= 5 and beat["offline_after"] == 5, doc
        assert "reason" not in doc
        # The heartbeat moves on (by the database's clock) while the process runs.
        deadline = time.monotonic() + 15
        while ((curl(base + "/healthz")[1] or {}).get("heartbeat") or {}).get("at") in (None, beat["at"]):
            assert time.monotonic() < deadline, "heartbeat did not advance"
            time.sleep(0.3)
        assert curl(base + "/livez") == (200, {"alive": True})
        status, body = curl(base + "/nodes")
        assert status == 404 and body is not None and "/healthz" in body["error"]
        assert curl(base + "/healthz", "-X", "POST")[0] == 405
        head = subprocess.run(
            ["curl", "-s", "-I", "-m", "10", base + "/healthz"], capture_output=True, text=True, check=False
        )
        assert head.stdout.startswith("HTTP/1.1 200") and "application/json" in head.stdout, head.stdout
        status, body = curl(base + "/healthz", "-H", "X-Big: " + "a" * 8000)
        assert status == 431, (status, body)
        # A client that sends nothing is dropped after the head timeout without blocking a probe.
        with socket.create_connection(("127.0.0.1", int(base.rsplit(":", 1)[1])), timeout=10) as idle:
            assert curl(base + "/healthz")[0] == 200
            idle.settimeout(10)
            assert idle.recv(100) == b""  # closed by the server within HEAD_TIMEOUT (5 s)


def test_netboot_process_answers_healthz_without_a_heartbeat(tmp_path: Path) -> None:
    env = {
        "BOOTFORGE_NETBOOT__ADDRESS": "127.0.0.1",
        "BOOTFORGE_NETBOOT__HTTP": "true",
        "BOOTFORGE_NETBOOT__HTTP_PORT": str(free_port()),
    }
    with serve(tmp_path, "netboot", **env) as (base, proc, log):
        doc = wait_for(base + "/healthz", 200, 60, proc, log)
        assert doc["role"] == "netboot" and doc["database"]["reachable"] is True, doc
        assert doc["heartbeat"] is None, doc


@pytest.mark.parametrize(("role", "heartbeats"), [("all", True), ("api", False)])
def test_api_roles_answer_healthz_on_their_own_listener(tmp_path: Path, role: str, heartbeats: bool) -> None:
    """The API roles get the same check beside the API (an API-only process does not heartbeat)."""
    with serve(tmp_path, role) as (base, proc, log):
        doc = wait_for(base + "/healthz", 200, 60, proc, log)
        assert doc["role"] == role and doc["database"]["reachable"] is True, doc
        assert (doc["heartbeat"] is not None) == heartbeats, doc


@pytest.mark.postgres
@pytest.mark.slow
def test_conductor_with_its_database_gone_answers_503_naming_why(tmp_path: Path) -> None:
    try:
        pg_cm = running_postgres()
        pg = pg_cm.__enter__()
    except LookupError as exc:
        pytest.skip(f"needs {exc}")
    try:
        url = pg.url()
        with serve(tmp_path, "conductor", BOOTFORGE_DATABASE_URL=url) as (base, proc, log):
            wait_for(base + "/healthz", 200, 60, proc, log)
            pg.stop()
            doc = wait_for(base + "/healthz", 503, 30, proc, log)
            assert doc["reason"].startswith("database unreachable: "), doc
            assert doc["database"] == {"reachable": False}, doc
            assert pg.password not in json.dumps(doc)
            # Liveness does not follow the database: restarting the process would not bring it back.
            assert curl(base + "/livez") == (200, {"alive": True})
    finally:
        pg_cm.__exit__(None, None, None)


@pytest.fixture
async def sqlite_db(tmp_path: Path) -> AsyncIterator[tuple[Settings, Database]]:
    settings = Settings.model_validate(
        {
            "state_dir": tmp_path,
            "host": "c-1",
            "conductor_heartbeat_interval": 1,
            "conductor_offline_after": 30,
        }
    )
    db = Database(settings.database_url)
    await db.migrate()
    try:
        yield settings, db
    finally:
        await db.close()


async def test_stale_heartbeat_and_unregistered_conductor_are_unhealthy(
    sqlite_db: tuple[Settings, Database],
) -> None:
    settings, db = sqlite_db
    check = HealthCheck(settings, db, heartbeats=True)
    result = await check._check()
    assert not result.ok and result.doc["reason"] == "conductor c-1 is not registered in the database"
    async with db.write() as s, s.begin():
        s.add(Conductor(hostname="c-1", online=True, conductor_group="", hardware_types=[]))
    async with db.write() as s, s.begin():
        await s.execute(update(Conductor).values(heartbeat_at=db_now()))
    result = await check._check()
    assert result.ok, result.doc
    assert result.doc["heartbeat"]["age"] < 5, result.doc
    # Written 120 s back by the database's clock: stale whatever this host's clock says.
    async with db.write() as s, s.begin():
        await s.execute(update(Conductor).values(heartbeat_at=db_now(120)))
    result = await check._check()
    assert not result.ok, result.doc
    assert 119 <= result.doc["heartbeat"]["age"] <= 130, result.doc
    assert result.doc["reason"].startswith("heartbeat is 1"), result.doc
    assert "conductor_offline_after 30 s" in result.doc["reason"], result.doc
    async with db.write() as s, s.begin():
        await s.execute(update(Conductor).values(heartbeat_at=db_now(), online=False))
    result = await check._check()
    assert not result.ok and "marked offline" in result.doc["reason"], result.doc
    # An API-only or netboot process does not heartbeat: the database answering is its health.
    assert (await HealthCheck(settings, db, heartbeats=False).check()).ok


def test_health_listen_setting_is_checked() -> None:
    with pytest.raises(ValueError, match="health_listen must be HOST:PORT"):
        Settings.model_validate({"health_listen": "6390"})
    assert Settings.model_validate({"health_listen": "[::1]:6390"}).health_listen_host_port == ("::1", 6390)
