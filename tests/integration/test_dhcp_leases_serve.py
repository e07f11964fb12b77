"""The DHCP leases of `bootforge serve` are in its database once ACKed, and outlive the process.

`bootforge serve` runs in a network namespace with DHCP in full mode, on SQLite (the default: role
all, the database in its state dir) and on PostgreSQL (`serve --role netboot`, the database of a
throwaway server). busybox udhcpc in client namespaces is the client. After a client is bound, serve
is killed with SIGKILL (a crash: no shutdown, no final flush): the lease row is in the database,
bound to the client's MAC. A new serve on the same database loads it: a second client is not given
that address (without the row it would be: the pool's round robin restarts at its first address),
and the first client, asking again, gets its address back.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import create_async_engine
from support.netns import Host, Lan

from bootforge.db.models import Lease

pytestmark = pytest.mark.netns

BOOTFORGE = str(Path(sys.executable).parent / "bootforge")
POOL_FIRST = "10.213.0.100"
READY_TIMEOUT = 60.0


def _config(tmp_path: Path, database: str) -> tuple[Path, str]:
    """The serve config and the URL its leases are in."""
    state = tmp_path / "state"
    if database == "sqlite":
        head, url = "", f"sqlite+aiosqlite:///{state / 'bootforge.sqlite'}"
    else:
        url = database
        head = f'role = "netboot"\nhost = "netboot-lease-test"\ndatabase_url = "{url}"\n'
    path = tmp_path / "bootforge.toml"
    path.write_text(
        f"""{head}
state_dir = "{state}"
listen = "127.0.0.1:6385"
power_sync_interval = 0
enabled_hardware_types = ["fake-hardware"]

[netboot]
address = "10.213.0.1"
dhcp = "full"
dhcp_interfaces = ["eth0"]
unknown_clients = "discover"
api_url = "http://127.0.0.1:6385/"

[[netboot.subnets]]
network = "10.213.0.0/24"
pool = "{POOL_FIRST}-10.213.0.150"
routers = ["10.213.0.1"]
lease_time = 600
"""
    )
    return path, url


@contextmanager
def serve(lan: Lan, config: Path, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """`bootforge serve` in the server namespace, until its DHCP socket is bound; killed by PID."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BOOTFORGE_")}
    with log.open("a") as out:
        proc = lan.server.ns.popen([BOOTFORGE, "serve", "--config", str(config)], stdout=out,
                                   stderr=subprocess.STDOUT, env=env)  # fmt: skip
    try:
        deadline = time.monotonic() + READY_TIMEOUT
        while not lan.server.ns.run(["ss", "-Hlun", "sport = :67"], check=False).stdout.strip():
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"serve did not bind udp/67: {log.read_text()[-3000:]}")
            time.sleep(0.1)
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(15)


def udhcpc(client: Host, tmp_path: Path, name: str) -> str:
    """Run busybox udhcpc to a lease; the address it was bound to."""
    record = tmp_path / f"{name}.env"
    script = tmp_path / f"{name}.sh"
    script.write_text(f'#!/bin/sh\n[ "$1" = bound ] && echo "$ip" > {record}\nexit 0\n')
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    argv = ["busybox", "udhcpc", "-i", "eth0", "-f", "-q", "-n", "-t", "5", "-T", "1", "-s", str(script)]
    done = client.ns.run(argv, check=False, timeout=30)
    assert done.returncode == 0 and record.exists(), done.stderr
    return record.read_text().strip()


def leases(url: str) -> dict[str, tuple[str, str]]:
    """ip -> (mac, state), read straight from the database."""

    async def read() -> dict[str, tuple[str, str]]:
        engine = create_async_engine(url)
        try:
            async with engine.connect() as conn:
                rows = (await conn.execute(select(Lease.ip, Lease.mac, Lease.state))).all()
        finally:
            await engine.dispose()
        return {ip: (mac, state) for ip, mac, state in rows}

    return asyncio.run(read())


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database(request: pytest.FixtureRequest) -> str:
    if request.param == "sqlite":
        return "sqlite"
    url: str = request.getfixturevalue("postgres_fresh_url")
    server = request.getfixturevalue("postgres_server")
    # Over its unix socket (a path, reachable from the server namespace, whose 127.0.0.1 is its own).
    dbname = url.rsplit("/", 1)[1]
    return f"postgresql+asyncpg://bootforge@/{dbname}?host={server.sockdir}&port={server.port}"


def test_an_acked_lease_is_in_the_database_and_survives_a_crash(
    netns_lan: Lan, tmp_path: Path, database: str
) -> None:
    if shutil.which("busybox") is None:
        pytest.skip("needs busybox (Debian package busybox) for udhcpc")
    config, url = _config(tmp_path, database)
    log = tmp_path / "serve.log"
    first = netns_lan.client
    with serve(netns_lan, config, log) as proc:
        ip = udhcpc(first, tmp_path, "first")
        assert ip == POOL_FIRST
        # The ACK was held until its commit: the row is there before the crash, whatever the timing.
        proc.send_signal(signal.SIGKILL)
        proc.wait(15)
    assert leases(url).get(ip) == (first.mac, "bound"), leases(url)

    second = netns_lan.add_client()
    with serve(netns_lan, config, log):
        other = udhcpc(second, tmp_path, "second")
        assert other != ip, f"{second.mac} was given {first.mac}'s address after a restart"
        assert udhcpc(first, tmp_path, "first-again") == ip
    rows = leases(url)
    assert rows[ip] == (first.mac, "bound") and rows[other] == (second.mac, "bound"), rows
