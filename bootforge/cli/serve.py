"""The composition root: settings -> database -> conductor -> API, all in one asyncio loop.

`settings.role` (serve --role) picks the parts: "all" runs everything in one process (the embedded
default); "api" the REST API only (it never runs node work: conductor/handoff.py hands each action to
the node's owner on the ring); "conductor" registers, heartbeats, runs the periodics and node work,
and serves no HTTP at all; "netboot" runs DHCP/TFTP/HTTP boot for the nodes of its conductor group,
on the same database, pointing ramdisks at `netboot.api_url`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Generator

import uvicorn

from bootforge.api.app import create_app
from bootforge.api.auth import Htpasswd
from bootforge.api.deps import Services
from bootforge.api.limits import limited_protocol
from bootforge.cli.netboot import start_netboot
from bootforge.conductor.conductor import Conductor
from bootforge.config import Settings
from bootforge.db import secrets
from bootforge.db.engine import Database, private_dir
from bootforge.drivers.hardware import Drivers
from bootforge.observe.health import HealthServer, start_health

log = logging.getLogger("bootforge")


async def open_database(settings: Settings) -> Database:
    """Open the database, migrated to the newest schema, with the key of its secrets."""
    private_dir(settings.state_dir)
    db = Database(settings.database_url)
    await db.migrate()
    # Before anything reads a node: BMC passwords are stored encrypted under this key (db/secrets.py).
    try:
        await secrets.open_with_key(db, settings.secret_key_path)
    except BaseException:
        await db.close()
        raise
    return db


async def build(settings: Settings) -> tuple[Database, Conductor, Services]:
    """Open the database and start the conductor (an API-only process builds one it never starts:
    the API's services read through it and hand node work to the owners)."""
    db = await open_database(settings)
    conductor = Conductor(settings, db)
    try:
        if settings.role != "api":
            await conductor.start()
        else:
            # Webhooks of the state changes this process writes (its outbox rows carry its name).
            await conductor.observer.start()
    except BaseException:
        await db.close()
        raise
    return db, conductor, Services.build(settings, conductor)


async def _stop(conductor: Conductor) -> None:
    if conductor.serving:
        await conductor.stop()
    else:
        await conductor.observer.stop()
        await conductor.drivers.close()


async def serve(settings: Settings) -> None:
    if settings.role == "netboot":
        await serve_netboot(settings)
        return
    try:
        db, conductor, services = await build(settings)
    except secrets.SecretKeyRefused as exc:
        # What to restore or run, not a traceback: the operator's next step is in the message.
        raise SystemExit(f"bootforge serve: {exc}") from None
    try:
        health = await start_health(settings, db, heartbeats=conductor.serving)
    except OSError as exc:
        await _stop(conductor)
        await db.close()
        raise SystemExit(f"bootforge serve: health_listen {settings.health_listen}: {exc}") from None
    netboot = await start_netboot(settings, db, conductor.drivers) if settings.role == "all" else None
    if netboot is not None:
        # The view refreshes on its own every few seconds; a state change this conductor makes
        # reaches it at once (one that another conductor makes waits for the refresh).
        conductor.state_listeners.append(netboot.view.changed)
        # /metrics reads the servers' own counters at scrape time.
        conductor.observer.metrics.watch_netboot(netboot.servers)
    htpasswd = (
        Htpasswd(settings.htpasswd_file)
        if settings.auth_strategy == "http_basic" and settings.htpasswd_file
        else None
    )
    app = create_app(services, htpasswd)
    host, port = settings.listen_host_port
    # httptools bounds neither the number nor the size of header fields; this protocol does (431).
    protocol = limited_protocol(settings.api_limits)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        http=protocol or "h11",
        h11_max_incomplete_event_size=settings.api_limits.max_header_bytes,
        log_level=settings.log_level,
        access_log=False,
        lifespan="off",
        server_header=False,
        date_header=False,
        # HTTPS when configured (the agent verifies it against the CA bundle in its ramdisk).
        ssl_certfile=str(settings.tls_cert_file) if settings.tls_cert_file else None,
        ssl_keyfile=str(settings.tls_key_file) if settings.tls_key_file else None,
    )
    server = _Server(config)
    # Event streams (api/routes/events.py) end when shutdown starts: uvicorn waits for every response.
    app.state.stopping = lambda: server.should_exit
    api = settings.api and settings.role != "conductor"
    log.info(
        "bootforge serving (role %s): API %s, database %s, conductor %s",
        settings.role,
        settings.public_url if api else "off",
        _safe_url(settings.database_url),
        f"{settings.host} (group {settings.conductor_group or 'default'})" if conductor.serving else "off",
    )
    try:
        if api:
            await server.serve()
        else:
            await _until_signalled()
    finally:
        if netboot is not None:
            await netboot.close()
        if health is not None:
            await health.close()
        await _stop(conductor)
        await db.close()


async def serve_netboot(settings: Settings) -> None:
    """DHCP/TFTP/HTTP boot alone, for the nodes of settings.conductor_group, until SIGINT/SIGTERM."""
    try:
        db = await open_database(settings)
    except secrets.SecretKeyRefused as exc:
        raise SystemExit(f"bootforge serve: {exc}") from None
    drivers = Drivers(settings)
    health: HealthServer | None = None
    try:
        try:
            health = await start_health(settings, db, heartbeats=False)
        except OSError as exc:
            raise SystemExit(f"bootforge serve: health_listen {settings.health_listen}: {exc}") from None
        netboot = await start_netboot(settings, db, drivers)
        if netboot is None:
            raise SystemExit(
                "bootforge serve --role netboot: no netboot service is on (netboot.dhcp, netboot.tftp, "
                "netboot.http)"
            )
        log.info(
            "bootforge serving (role netboot): group %s, ramdisks call %s, database %s",
            settings.conductor_group or "default",
            settings.netboot.api_url or settings.public_url,
            _safe_url(settings.database_url),
        )
        try:
            await _until_signalled()
        finally:
            await netboot.close()
    finally:
        if health is not None:
            await health.close()
        await drivers.close()
        await db.close()


class _Server(uvicorn.Server):
    """uvicorn's server, minus its re-raising of the signal that stopped it.

    uvicorn (0.29 and later) restores the previous handlers after a graceful exit and raises the
    captured signal again: SIGTERM's default action then kills the process before the conductor's
    shutdown in serve()'s `finally` runs (left online, locks kept), and SIGINT turns into a
    KeyboardInterrupt. Here both only ask the server to exit (a second SIGINT forces it, as in
    uvicorn), and the shutdown runs to its end.
    """

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.handle_exit, sig, None)
        try:
            yield
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)


def _safe_url(url: str) -> str:
    """The database URL without its password, for logs."""
    if "@" not in url:
        return url
    scheme, rest = url.split("://", 1)
    creds, host = rest.rsplit("@", 1)
    return f"{scheme}://{creds.split(':', 1)[0]}:***@{host}"


async def _until_signalled() -> None:
    """Run the netboot services (and conductor) without the API until SIGINT or SIGTERM."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
