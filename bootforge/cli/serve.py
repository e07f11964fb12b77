"""The composition root: settings -> database -> conductor -> API, all in one asyncio loop."""

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

log = logging.getLogger("bootforge")


async def build(settings: Settings) -> tuple[Database, Conductor, Services]:
    """Open the database (migrating it to the newest schema) and start the conductor."""
    private_dir(settings.state_dir)
    db = Database(settings.database_url)
    await db.migrate()
    # Before anything reads a node: BMC passwords are stored encrypted under this key (db/secrets.py).
    try:
        await secrets.open_with_key(db, settings.secret_key_path)
    except BaseException:
        await db.close()
        raise
    conductor = Conductor(settings, db)
    await conductor.start()
    return db, conductor, Services.build(settings, conductor)


async def serve(settings: Settings) -> None:
    try:
        db, conductor, services = await build(settings)
    except secrets.SecretKeyRefused as exc:
        # What to restore or run, not a traceback: the operator's next step is in the message.
        raise SystemExit(f"bootforge serve: {exc}") from None
    netboot = await start_netboot(settings, db, conductor.drivers)
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
    log.info(
        "bootforge serving: API %s, database %s, conductor %s",
        settings.public_url if settings.api else "off",
        _safe_url(settings.database_url),
        settings.host,
    )
    try:
        if settings.api:
            await server.serve()
        else:
            await _until_signalled()
    finally:
        if netboot is not None:
            await netboot.close()
        await conductor.stop()
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
