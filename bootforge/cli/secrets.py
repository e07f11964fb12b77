"""`bootforge secrets`: the key that encrypts BMC passwords at rest (bootforge/db/secrets.py)."""

from __future__ import annotations

import asyncio
import os
import secrets as pysecrets
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from sqlalchemy import select

from bootforge import keys
from bootforge.config import Settings
from bootforge.db import secrets
from bootforge.db.clock import heartbeat_fresh
from bootforge.db.engine import Database
from bootforge.db.models import Conductor

secrets_app = typer.Typer(help="The secret key that encrypts BMC passwords at rest.", no_args_is_help=True)
err = Console(stderr=True)


@secrets_app.command("rotate")
def rotate(
    new_key: Annotated[
        Path, typer.Option("--new-key", help="the key file to change to; created (0600) if it does not exist")
    ],
    config: Annotated[Path | None, typer.Option(help="TOML settings file")] = None,
    state_dir: Annotated[Path | None, typer.Option(help="where the database and files live")] = None,
    database_url: Annotated[
        str | None, typer.Option(help="SQLAlchemy URL; SQLite in state dir if unset")
    ] = None,
    force: Annotated[
        bool, typer.Option(help="rotate even if a conductor of this database seems to be running")
    ] = False,
) -> None:
    """Re-encrypt every node's secrets with NEW_KEY in one transaction, then install it as the key file.

    Stop every `bootforge serve` of the database first: a running conductor keeps the old key.
    """
    if config is not None:
        os.environ["BOOTFORGE_CONFIG"] = str(config)
    flags = {k: v for k, v in {"state_dir": state_dir, "database_url": database_url}.items() if v is not None}
    try:
        settings = Settings.model_validate(flags)
    except ValueError as e:
        err.print(f"[red]invalid settings:[/red] {e}")
        raise typer.Exit(2) from None
    try:
        message = asyncio.run(_rotate(settings, new_key, force))
    except (secrets.SecretKeyRefused, keys.KeyFileError) as e:
        err.print(f"[red]not rotated:[/red] {e}", highlight=False)
        raise typer.Exit(1) from None
    typer.echo(message)


async def _rotate(settings: Settings, new_key: Path, force: bool) -> str:
    key_path = settings.secret_key_path
    if not key_path.exists():
        raise secrets.SecretKeyRefused(f"the current key file {key_path} does not exist")
    old = keys.load_or_create(key_path)
    new = keys.load_or_create(new_key)
    if new.fingerprint() == old.fingerprint():
        raise secrets.SecretKeyRefused(f"{new_key} is the current key (fingerprint {old.fingerprint()})")
    db = Database(settings.database_url)
    try:
        await db.migrate()
        if not force:
            await _refuse_running(db, settings.conductor_offline_after)
        done = await secrets.rotate(db, old, new)
    finally:
        await db.close()
    try:
        _install(new_key, key_path)
    except OSError as e:
        raise secrets.SecretKeyRefused(
            f"the database's secrets are now encrypted with {new_key} (fingerprint {new.fingerprint()}), "
            f"but it could not be copied to {key_path}: {e}; copy it there (mode 0600) before starting "
            "bootforge serve"
        ) from None
    return (
        f"re-encrypted {done.values} secret(s) of {done.nodes} node(s): key {old.fingerprint()} -> "
        f"{new.fingerprint()}; {key_path} now holds the new key. Backups of the database taken before "
        "now still need the old key; give every conductor of this database the new file."
    )


async def _refuse_running(db: Database, offline_after: float) -> None:
    # Judged in SQL by the database's clock, as the conductors judge each other (db/clock.py): this
    # host's clock may be minutes off theirs, which would call a live conductor gone (or a dead one
    # running).
    async with db.read() as s:
        running = list(
            (
                await s.execute(
                    select(Conductor.hostname)
                    .where(
                        Conductor.online.is_(True),
                        heartbeat_fresh(Conductor.heartbeat_at, offline_after),
                    )
                    .order_by(Conductor.hostname)
                )
            ).scalars()
        )
    if running:
        raise secrets.SecretKeyRefused(
            f"conductor(s) {', '.join(running)} of this database are running and keep the old key in "
            "memory: stop every bootforge serve first (a conductor counts as running until its last "
            f"heartbeat is {offline_after:g} s old: conductor_offline_after), or pass --force if they "
            "are gone"
        )


def _install(source: Path, target: Path) -> None:
    """Copy the key in `source` to `target` atomically (a reader sees the old key or the new one)."""
    data = source.read_bytes()
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{pysecrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.replace(tmp, target)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise
