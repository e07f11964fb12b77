"""A throwaway PostgreSQL server for tests (Debian's ``postgresql`` binaries, no system cluster).

The server runs as the unprivileged ``postgres`` user when we are root (PostgreSQL refuses to run as
root), listens only on 127.0.0.1 plus a unix socket in its own temp dir, and uses password (scram)
auth on TCP so the URLs the tests get look like production ones.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

PG_ROOT = Path("/usr/lib/postgresql")
SERVICE_USER = "postgres"
SUPERUSER = "bootforge"
DEFAULT_DB = "bootforge_test"
_START_ATTEMPTS = 3  # the free port we picked may be taken before the server binds it


def find_pg_bin() -> Path | None:
    """The newest ``/usr/lib/postgresql/<ver>/bin`` that has initdb and pg_ctl."""
    candidates = [d / "bin" for d in PG_ROOT.glob("*") if (d / "bin" / "pg_ctl").exists()]
    candidates = [c for c in candidates if (c / "initdb").exists()]
    if not candidates:
        return None
    return max(candidates, key=lambda p: _version_key(p.parent.name))


def _version_key(name: str) -> tuple[int, ...]:
    return tuple(int(part) for part in name.split(".") if part.isdigit())


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class PostgresServer:
    bindir: Path
    base: Path  # temp dir holding data/, sock/, server.log, owned by the service user
    password: str = field(default_factory=lambda: secrets.token_hex(16))
    port: int = 0
    run_as: str | None = None  # set when we are root

    @property
    def datadir(self) -> Path:
        return self.base / "data"

    @property
    def sockdir(self) -> Path:
        return self.base / "sock"

    @property
    def logfile(self) -> Path:
        return self.base / "server.log"

    def url(self, dbname: str = DEFAULT_DB, driver: str = "asyncpg") -> str:
        """SQLAlchemy URL, e.g. ``postgresql+asyncpg://bootforge:...@127.0.0.1:PORT/db``."""
        return f"postgresql+{driver}://{SUPERUSER}:{self.password}@127.0.0.1:{self.port}/{dbname}"

    def _run(self, tool: str, *args: str) -> subprocess.CompletedProcess[str]:
        kw: dict[str, Any] = {}
        if self.run_as is not None:
            pw = pwd.getpwnam(self.run_as)
            kw = {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "PGTZ": "UTC"}
        proc = subprocess.run(
            [str(self.bindir / tool), *args],
            capture_output=True,
            text=True,
            cwd=self.base,
            env=env,
            timeout=180,
            check=False,
            **kw,
        )
        if proc.returncode != 0:
            log = self.logfile.read_text(errors="replace")[-2000:] if self.logfile.exists() else ""
            raise RuntimeError(f"{tool} {' '.join(args)} failed: {proc.stderr.strip()}\n{log}")
        return proc

    def init(self) -> None:
        self.sockdir.mkdir()
        pwfile = self.base / "pwfile"
        pwfile.write_text(self.password + "\n")
        self._chown(self.base, self.sockdir, pwfile)
        self._run(
            "initdb", "-D", str(self.datadir), "-U", SUPERUSER, f"--pwfile={pwfile}",
            "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--no-locale",
            "--no-sync",
        )  # fmt: skip
        pwfile.unlink()

    def _chown(self, *paths: Path) -> None:
        if self.run_as is not None:
            pw = pwd.getpwnam(self.run_as)
            for p in paths:
                os.chown(p, pw.pw_uid, pw.pw_gid)

    def start(self) -> None:
        for attempt in range(_START_ATTEMPTS):
            self.port = _free_port()
            # Durability is irrelevant for a throwaway server; these make DDL-heavy tests fast.
            opts = (
                f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.sockdir} "
                "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
                "-c shared_buffers=32MB"
            )
            try:
                self._run("pg_ctl", "-D", str(self.datadir), "-l", str(self.logfile),
                          "-w", "-t", "120", "-o", opts, "start")  # fmt: skip
                return
            except RuntimeError:
                if attempt == _START_ATTEMPTS - 1:
                    raise

    def create_database(self, dbname: str) -> None:
        self._run("createdb", "-h", str(self.sockdir), "-p", str(self.port), "-U", SUPERUSER, dbname)

    def drop_database(self, dbname: str) -> None:
        self._run("dropdb", "-h", str(self.sockdir), "-p", str(self.port), "-U", SUPERUSER,
                  "--force", dbname)  # fmt: skip

    def stop(self) -> None:
        if not (self.datadir / "postmaster.pid").exists():
            return
        try:
            self._run("pg_ctl", "-D", str(self.datadir), "-w", "-t", "60", "-m", "fast", "stop")
        except RuntimeError:
            self._run("pg_ctl", "-D", str(self.datadir), "-w", "-m", "immediate", "stop")


def _service_user() -> str | None:
    with contextlib.suppress(KeyError):
        return pwd.getpwnam(SERVICE_USER).pw_name
    return None


@contextlib.contextmanager
def running_postgres() -> Iterator[PostgresServer]:
    """Start a server with database ``bootforge_test``; stop it and remove its files afterwards.

    Raises LookupError (with what is missing) when it cannot run here.
    """
    bindir = find_pg_bin()
    if bindir is None:
        raise LookupError("PostgreSQL server binaries (apt-get install postgresql)")
    run_as = None
    if os.geteuid() == 0:
        run_as = _service_user()
        if run_as is None:
            raise LookupError(f"a '{SERVICE_USER}' system user to run PostgreSQL as (not root)")
    base = Path(tempfile.mkdtemp(prefix="bf-pg-", dir="/tmp"))
    server = PostgresServer(bindir=bindir, base=base, run_as=run_as)
    try:
        server.init()
        server.start()
        server.create_database(DEFAULT_DB)
        yield server
    finally:
        try:
            server.stop()
        finally:
            shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A running throwaway PostgreSQL server for the whole session."""
    try:
        with running_postgres() as server:
            yield server
    except LookupError as exc:
        pytest.skip(f"needs {exc}")


@pytest.fixture(scope="session")
def postgres_url(postgres_server: PostgresServer) -> str:
    """``postgresql+asyncpg://`` URL of the shared session database ``bootforge_test``."""
    return postgres_server.url()


@pytest.fixture(scope="session")
def postgres_sync_url(postgres_server: PostgresServer) -> str:
    """``postgresql+psycopg://`` URL of the same database as ``postgres_url``."""
    return postgres_server.url(driver="psycopg")


@pytest.fixture
def postgres_fresh_url(postgres_server: PostgresServer) -> Iterator[str]:
    """An asyncpg URL of a new, empty database for this test only (dropped afterwards)."""
    dbname = f"t_{secrets.token_hex(6)}"
    postgres_server.create_database(dbname)
    yield postgres_server.url(dbname)
    postgres_server.drop_database(dbname)
