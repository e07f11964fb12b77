"""Helpers for the scale-out tests that break things on purpose: PostgreSQL restarted under running
conductors, conductors killed or frozen by PID. Processes are only ever signalled by the PID the test
started; every server listens on 127.0.0.1."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from support.postgres import DEFAULT_DB, SUPERUSER, PostgresServer
from support.service import BOOTFORGE, TEST_HARDWARE_TYPES, Served, free_port, served


def stop_postgres(pg: PostgresServer) -> None:
    """A fast shutdown: the server terminates every client connection (as a restart or a failover's
    demotion does) and stops listening."""
    pg._run("pg_ctl", "-D", str(pg.datadir), "-w", "-t", "60", "-m", "fast", "stop")


def start_postgres(pg: PostgresServer, shared_buffers: str = "32MB") -> None:
    """Start the stopped server again on the port its clients know (room for 300 connections:
    several conductors' pools)."""
    opts = (
        f"-c listen_addresses=127.0.0.1 -p {pg.port} -k {pg.sockdir} "
        f"-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c shared_buffers={shared_buffers} "
        "-c max_connections=300"
    )
    pg._run("pg_ctl", "-D", str(pg.datadir), "-l", str(pg.logfile), "-w", "-t", "120", "-o", opts, "start")


def restart_postgres(pg: PostgresServer, down_for: float) -> float:
    """Stop the server, keep it down `down_for` seconds, start it; the seconds it was unreachable."""
    began = time.monotonic()
    stop_postgres(pg)
    time.sleep(down_for)  # the outage itself is what is being tested, not a wait for something
    start_postgres(pg)
    return time.monotonic() - began


def freeze(proc: Served) -> None:
    assert proc.proc is not None and proc.proc.poll() is None
    proc.proc.send_signal(signal.SIGSTOP)


def thaw(proc: Served) -> None:
    assert proc.proc is not None
    proc.proc.send_signal(signal.SIGCONT)


@contextlib.contextmanager
def pg_conductor(tmp_path: Path, name: str, database_url: str, env: dict[str, str]) -> Iterator[Served]:
    """A `bootforge serve` named `name` on `database_url`; every conductor of the test shares one key file."""
    home = tmp_path / name
    home.mkdir()
    full = {**env, "BOOTFORGE_SECRET_KEY_FILE": str(tmp_path / "secret.key")}
    yield from served(home, env=full, args=["--host", name, "--database-url", database_url])


@contextlib.contextmanager
def streaming_standby(primary: PostgresServer) -> Iterator[PostgresServer]:
    """A hot standby of `primary` by streaming replication (pg_basebackup -R), on its own port; stopped
    and removed afterwards. Promote it with `promote(standby)`."""
    base = Path(tempfile.mkdtemp(prefix="bf-pg-standby-", dir="/tmp"))
    standby = PostgresServer(
        bindir=primary.bindir, base=base, password=primary.password, run_as=primary.run_as
    )
    try:
        standby.sockdir.mkdir()
        standby._chown(base, standby.sockdir)
        standby._run(
            "pg_basebackup", "-D", str(standby.datadir), "-h", str(primary.sockdir), "-p", str(primary.port),
            "-U", SUPERUSER, "-R", "-X", "stream", "--no-sync",
        )  # fmt: skip
        standby.port = free_port()
        start_postgres(standby)
        yield standby
    finally:
        try:
            standby.stop()
        finally:
            shutil.rmtree(base, ignore_errors=True)


def promote(standby: PostgresServer) -> None:
    standby._run("pg_ctl", "-D", str(standby.datadir), "-w", "-t", "60", "promote")


def failover_url(primary: PostgresServer, standby: PostgresServer) -> str:
    """The libpq-style multi-host URL a client of a primary/standby pair uses: both servers, and only a
    read-write session accepted (the standby is skipped until it is promoted)."""
    return (
        f"postgresql+asyncpg://{SUPERUSER}:{primary.password}@/{DEFAULT_DB}?host=127.0.0.1:{primary.port}"
        f"&host=127.0.0.1:{standby.port}&target_session_attrs=read-write"
    )


class Headless(Served):
    """A `serve --role conductor|netboot` process (no API): ready when `ready()` says so."""

    ready: Callable[[], bool] = staticmethod(lambda: False)

    def start(self, timeout: float = 60) -> None:
        self.log = self.state_dir.parent / f"serve-{self.port}.log"
        argv = [BOOTFORGE, "serve", "--state-dir", str(self.state_dir), "--listen", f"127.0.0.1:{self.port}"]
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [*argv, *self.args], stdout=out, stderr=subprocess.STDOUT, env=self.env
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"bootforge serve exited: {self.log.read_text()[-2000:]}")
            if self.ready():
                return
            time.sleep(0.2)
        raise RuntimeError(f"{self.args} not ready after {timeout}s: {self.log.read_text()[-2000:]}")


@contextlib.contextmanager
def headless(
    tmp_path: Path, name: str, role: str, database_url: str, env: dict[str, str], ready: Callable[[], bool]
) -> Iterator[Headless]:
    """`serve --role ROLE --host NAME` on `database_url`, sharing the test's key file."""
    home = tmp_path / name
    home.mkdir()
    full = {k: v for k, v in os.environ.items() if not k.startswith("BOOTFORGE_")}
    full["BOOTFORGE_ENABLED_HARDWARE_TYPES"] = json.dumps(TEST_HARDWARE_TYPES)
    full.update(env)
    full["BOOTFORGE_SECRET_KEY_FILE"] = str(tmp_path / "secret.key")
    h = Headless(
        home / "state", free_port(), full, ["--host", name, "--database-url", database_url, "--role", role]
    )
    h.ready = ready
    h.start()
    try:
        yield h
    finally:
        h.stop()
