"""The database engine: SQLite (WAL) by default, PostgreSQL through a URL; migrations run at start-up."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import socket
import stat
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import event, text
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import DBAPIError, DisconnectionError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.ext.asyncio import AsyncSession as AsyncSession

from bootforge.db import sqlite_inline
from bootforge.db.secrets import SESSION_DB, NodeSecrets

log = logging.getLogger("bootforge.db")

MIGRATIONS_DIR = Path(__file__).parent / "migrations"

# Conductors started together on one fresh PostgreSQL database would otherwise all create the schema at
# once and all but one fail; this transaction-scoped advisory lock makes them take turns. (SQLite needs
# nothing: the writer engine's BEGIN IMMEDIATE already serialises migrations.)
PG_MIGRATION_LOCK = 0x626F6F74


def is_sqlite(url: str) -> bool:
    return url.startswith("sqlite")


# Seconds a PostgreSQL session may sit idle inside a transaction before the server ends it.
IDLE_IN_TRANSACTION = 30.0


def make_engine(url: str, *, writer: bool = True) -> AsyncEngine:
    """An engine for `url`. On SQLite, `writer` engines begin IMMEDIATE transactions (see below)."""
    if is_sqlite(url):
        path = url.split(":///", 1)[1] if ":///" in url else ""
        if path and path != ":memory:":
            private_sqlite_file(Path(path))
        # One writer connection per process: writers queue in asyncio for it, never in SQLite's busy
        # handler (which sleeps in steps of up to 100 ms). Readers get a pool of their own.
        pool = {"pool_size": 1, "max_overflow": 0, "pool_timeout": 120} if writer else {}
        engine = create_async_engine(url, async_creator=sqlite_inline.creator(path), **pool)
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        # A deferred BEGIN would let a writer read, then fail with "database is locked" when it first
        # writes while another holds the lock: writers take the lock at BEGIN. Readers issue no BEGIN
        # at all (SQLite autocommit): a lone SELECT is consistent by itself, and polls save a statement.
        if writer:
            event.listen(engine.sync_engine, "begin", _sqlite_begin_immediate)
        return engine
    # No pool_pre_ping: on asyncpg it costs three round trips (BEGIN, ";", ROLLBACK) per checkout,
    # 16% of a conductor's samples under load. A connection that a PostgreSQL restart or failover
    # closed is still found and replaced at checkout, by _drop_closed (a local check of the socket,
    # no round trip); one that dies unseen (a network partition) fails its statement, which
    # is_connection_lost classifies, the work retries, and SQLAlchemy then recycles every connection
    # of the pool made before the failure. pool_recycle bounds how long a connection may stay pinned
    # to one server (after a failover the old primary may come back as a standby). The multi-host
    # URL and target_session_attrs (libpq's, understood by asyncpg and psycopg) pick the writable
    # server at each connect.
    # pool_size 20 (kept open) + 10 overflow: the same 30 at most as before, but a burst of API
    # requests no longer opens and closes a connection each beyond the tenth (a TCP and TLS
    # negotiation, authentication and an empty statement cache every time), 4% of samples under load.
    # Four conductors keep at most 80 open, within PostgreSQL's default max_connections of 100.
    # A conductor that stalls (SIGSTOP, a VM paused, a GC storm) inside a transaction keeps its row
    # locks, and its peers' takeover UPDATEs would wait behind them for as long as it stalls: the
    # server ends such a session after IDLE_IN_TRANSACTION, which frees its locks (bootforge never
    # waits on anything but the database inside a transaction, so a live one is never idle that long).
    timeout_ms = str(int(IDLE_IN_TRANSACTION * 1000))
    if make_url(url).get_driver_name() == "asyncpg":
        connect_args: dict[str, Any] = {
            "server_settings": {"idle_in_transaction_session_timeout": timeout_ms}
        }
    else:
        connect_args = {"options": f"-c idle_in_transaction_session_timeout={timeout_ms}"}
    engine = create_async_engine(
        url, pool_size=20, max_overflow=10, pool_recycle=600, connect_args=connect_args
    )
    event.listen(engine.sync_engine.pool, "checkout", _drop_closed)
    return engine


def _drop_closed(dbapi_conn: Any, _record: Any, _proxy: Any) -> None:
    """At checkout: a connection whose server closed it (restart, failover, idle timeout) is replaced.

    The driver learns of the close on its own (the server's FATAL message and the socket's end are
    read by the event loop while the connection sits in the pool), so this costs no round trip.
    DisconnectionError makes the pool discard it and check out another (SQLAlchemy's documented
    "custom pessimistic ping").
    """
    driver = getattr(dbapi_conn, "driver_connection", None)
    is_closed = getattr(driver, "is_closed", None)  # asyncpg
    closed = is_closed() if callable(is_closed) else bool(getattr(driver, "closed", False))  # psycopg
    if closed:
        raise DisconnectionError("the server closed this pooled connection")


# asyncpg's exceptions for a server that went away or is not (yet) accepting connections, by name:
# class 08 (connection exception) and 57P01-57P03 (admin/crash shutdown, cannot connect now).
_LOST_NAMES = frozenset(
    {
        "ConnectionDoesNotExistError",
        "PostgresConnectionError",
        "ConnectionFailureError",
        "ConnectionRejectionError",
        "ClientCannotConnectError",
        "AdminShutdownError",
        "CrashShutdownError",
        "CannotConnectNowError",
        "IdleInTransactionSessionTimeoutError",  # 25P03: the server ended a stalled session
        "ReadOnlySQLTransactionError",  # 25006: connected to a standby (a failover under way)
        # A multi-host URL with target_session_attrs=read-write found no writable server (yet).
        "TargetServerAttributeNotMatched",
    }
)


def is_connection_lost(exc: BaseException) -> bool:
    """True when `exc` says the database went away (restart, failover, network), not that a statement
    was wrong: the work that hit it is to be retried once the database answers, not failed.

    Raw socket errors count only when raised inside the database driver or SQLAlchemy (asyncpg
    raises ConnectionRefusedError from connect unwrapped); a BMC driver's own ConnectionError does not.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, DBAPIError):
            if current.connection_invalidated:
                return True
            if current.orig is not None and type(current.orig).__name__ in _LOST_NAMES:
                return True
            if isinstance(current, OperationalError) and "server closed the connection" in str(current):
                return True
        if type(current).__name__ in _LOST_NAMES:
            return True
        if isinstance(current, ConnectionError | socket.gaierror) and _raised_in_database_code(current):
            return True
        current = current.__cause__ or current.__context__
    return False


def _raised_in_database_code(exc: BaseException) -> bool:
    tb = exc.__traceback__
    while tb is not None:
        name = tb.tb_frame.f_globals.get("__name__", "")
        if name.startswith(("sqlalchemy.", "asyncpg.", "psycopg.")):
            return True
        tb = tb.tb_next
    return False


async def wait_until_reachable(db: Database, *, give_up_after: float, first_delay: float = 0.2) -> bool:
    """Wait (backing off to 5 s between tries) until `SELECT 1` on the write engine succeeds.

    True once it does; False after `give_up_after` seconds. The pool replaces the dead connections
    on the way (closed ones at checkout, see _drop_closed; others when their statement fails).
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + give_up_after
    delay = first_delay
    while True:
        try:
            async with db.write_engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
            return True
        except Exception as exc:
            if not is_connection_lost(exc):
                raise
            if loop.time() + delay > deadline:
                return False
            log.debug("database still unreachable: %s", exc)
        await asyncio.sleep(delay)
        delay = min(5.0, delay * 2)


def private_dir(path: Path) -> None:
    """Create `path` (and its parents) with mode 0700, or tighten it to 0700 if others can enter it.

    For bootforge's state directory: it holds the database (BMC passwords), console logs and images.
    """
    if not path.exists():
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(path, 0o700)  # mkdir's mode passes through the umask; chmod does not
        return
    _tighten(path, 0o700)


def private_sqlite_file(path: Path) -> None:
    """Make the SQLite database at `path` readable by its owner only, before SQLite opens it.

    SQLite creates the -wal, -shm and -journal files with the mode of the database file, so a
    database created here with 0600 keeps all of them 0600 whatever the umask; files a bootforge
    before this one left readable by others are tightened (logged). A new directory for it is 0700.
    """
    if not path.parent.exists():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(path.parent, 0o700)
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    for suffix in ("", "-wal", "-shm", "-journal", ".migrate-lock"):
        sibling = path.with_name(path.name + suffix)
        if sibling.exists():
            _tighten(sibling, 0o600)


def _tighten(path: Path, mode: int) -> None:
    current = stat.S_IMODE(path.stat().st_mode)
    if current & 0o077:
        os.chmod(path, current & mode)
        log.warning(
            "%s was readable by others (mode %04o): now %04o; it holds BMC credentials",
            path,
            current,
            current & mode,
        )


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    # NORMAL in WAL mode is durable against process crashes (SIGKILL); only an OS crash may lose the
    # last transactions, which is the trade every WAL deployment makes.
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


def _sqlite_begin_immediate(conn: Connection) -> None:
    conn.exec_driver_sql("BEGIN IMMEDIATE")


class Database:
    """Sessions for reading and for writing.

    On SQLite, writes go through an engine whose transactions take the write lock at BEGIN, so two
    writers queue on busy_timeout instead of failing half-way; reads use deferred transactions and, in
    WAL mode, never wait for writers. On PostgreSQL both share one pool; reads run in autocommit.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self.write_engine = make_engine(url, writer=True)
        # On PostgreSQL, reads share the write engine's pool in autocommit: a lone SELECT is
        # consistent by itself, and a read then costs one round trip instead of three (BEGIN,
        # SELECT, ROLLBACK) - the same as SQLite's readers, which issue no BEGIN either.
        self.read_engine = (
            make_engine(url, writer=False)
            if is_sqlite(url)
            else self.write_engine.execution_options(isolation_level="AUTOCOMMIT")
        )
        # The key for node secrets at rest, set by db.secrets.open_with_key after migrating; the ORM
        # events of db/secrets.py find it through each session's info.
        self.secrets: NodeSecrets | None = None
        info = {SESSION_DB: self}
        self._write = async_sessionmaker(self.write_engine, expire_on_commit=False, info=info)
        self._read = async_sessionmaker(self.read_engine, expire_on_commit=False, info=info)

    def write(self) -> AsyncSession:
        return self._write()

    def read(self) -> AsyncSession:
        return self._read()

    @asynccontextmanager
    async def write_conn(self) -> AsyncIterator[AsyncConnection]:
        """A Core connection in a write transaction (committed on success) for hot-path writes."""
        async with self.write_engine.begin() as conn:
            yield conn

    @asynccontextmanager
    async def statement_conn(self) -> AsyncIterator[AsyncConnection]:
        """A Core connection for a write that is ONE statement (a conditional UPDATE ... RETURNING).

        On PostgreSQL it runs in autocommit: a single statement is atomic by itself, and skipping
        BEGIN and COMMIT makes it one round trip instead of three. On SQLite it is write_conn (the
        one writer connection, BEGIN IMMEDIATE). Never use it for two statements that must commit
        together.
        """
        if is_sqlite(self.url):
            async with self.write_conn() as conn:
                yield conn
            return
        async with self.read_engine.connect() as conn:
            yield conn

    def read_conn(self) -> AsyncConnection:
        """A plain connection for Core reads on hot paths (no ORM session bookkeeping)."""
        return self.read_engine.connect()

    async def migrate(self, wait_for_database: float = 120.0) -> None:
        """Migrate at start-up; a database that is restarting or failing over (the connection lost or
        refused) is waited for up to `wait_for_database` seconds instead of ending the process."""
        deadline = asyncio.get_running_loop().time() + wait_for_database
        while True:
            try:
                await migrate(self.write_engine)
                return
            except Exception as exc:
                remaining = deadline - asyncio.get_running_loop().time()
                if not is_connection_lost(exc) or remaining <= 0:
                    raise
                log.warning("database unreachable at start-up (%s); waiting for it", type(exc).__name__)
                await asyncio.sleep(0.5)
                await wait_until_reachable(self, give_up_after=remaining)

    async def close(self) -> None:
        await self.write_engine.dispose()
        if is_sqlite(self.url):  # on PostgreSQL the read engine is a view of the write engine's pool
            await self.read_engine.dispose()


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


async def migrate(engine: AsyncEngine, revision: str = "head") -> None:
    """Bring the schema to `revision` (head by default); safe to call at every start, from any process."""
    async with _sqlite_file_lock(engine), engine.begin() as conn:
        await _lock_migrations(conn)
        await conn.run_sync(_upgrade, str(engine.url), revision)


async def downgrade(engine: AsyncEngine, revision: str = "base") -> None:
    async with _sqlite_file_lock(engine), engine.begin() as conn:
        await _lock_migrations(conn)
        await conn.run_sync(_downgrade, str(engine.url), revision)


@asynccontextmanager
async def _sqlite_file_lock(engine: AsyncEngine) -> AsyncIterator[None]:
    """SQLite's stand-in for PostgreSQL's advisory lock: a file lock beside the database.

    Processes that start together on a new file would otherwise race to switch it to WAL (which
    needs exclusive access, and SQLite may refuse at once rather than wait) and to create tables.
    It is taken before the first connection, so the journal-mode switch is inside it too.
    """
    path = engine.url.database if engine.dialect.name == "sqlite" else None
    if not path or path == ":memory:":
        yield
        return
    fd = await asyncio.to_thread(os.open, f"{path}.migrate-lock", os.O_CREAT | os.O_RDWR, 0o600)
    try:
        await asyncio.to_thread(fcntl.flock, fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


async def _lock_migrations(conn: AsyncConnection) -> None:
    if conn.dialect.name == "postgresql":
        await conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": PG_MIGRATION_LOCK})


def _upgrade(conn: Connection, url: str, revision: str) -> None:
    cfg = alembic_config(url)
    cfg.attributes["connection"] = conn
    command.upgrade(cfg, revision)


def _downgrade(conn: Connection, url: str, revision: str) -> None:
    cfg = alembic_config(url)
    cfg.attributes["connection"] = conn
    command.downgrade(cfg, revision)
