"""Several TFTP processes on one port (SO_REUSEPORT): servers, worker processes, `bootforge serve`.

The kernel spreads requests over the listening sockets by the client's address and port, so
each test fetches from many client sockets; that every listener got none of them is odds of
2^-16 or less, not a flake worth designing around.
"""

from __future__ import annotations

import asyncio
import os
import socket
import stat
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.netns import Lan
from support.serve_netns import api, serve_in
from support.tools import need

from bootforge.netboot.tftp import FileSystemSource
from bootforge.servers.tftp import TftpEvent, TftpServer
from bootforge.servers.tftp_workers import TftpWorkers, WorkerSpec

FETCHES = 24
PXE_X64 = "PXEClient:Arch:00007:UNDI:003000"


def fetch(port: int, name: str) -> bytes:
    """A lockstep RRQ from a fresh socket (so from a fresh source port); blocking."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(10.0)  # a hang guard, not a speed check
        sock.sendto(b"\0\x01" + name.encode() + b"\0octet\0", ("127.0.0.1", port))
        data, expected = bytearray(), 1
        while True:
            packet, server = sock.recvfrom(65536)
            opcode, block = struct.unpack_from("!HH", packet)
            assert opcode == 3, packet
            if block == expected & 0xFFFF:
                data += packet[4:]
                expected += 1
            sock.sendto(struct.pack("!HH", 4, block), server)
            if len(packet) - 4 < 512:
                return bytes(data)


async def fetch_many(port: int, name: str, count: int = FETCHES) -> list[bytes]:
    return await asyncio.gather(*(asyncio.to_thread(fetch, port, name) for _ in range(count)))


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "blob.bin").write_bytes(os.urandom(5000))
    return tmp_path


async def test_two_servers_with_reuse_port_share_one_port(root: Path) -> None:
    source = FileSystemSource(root)
    async with TftpServer(source, "127.0.0.1", port=0, reuse_port=True) as first:
        port = first.local_address[1]
        with pytest.raises(OSError):  # without the option the port stays taken
            await TftpServer(source, "127.0.0.1", port=port).start()
        async with TftpServer(source, "127.0.0.1", port=port, reuse_port=True) as second:
            got = await fetch_many(port, "blob.bin")
            # A client is done once it sent its last ACK; the server counts the transfer when that
            # ACK arrives (the native data plane reports it through the loop): wait for both.
            deadline = asyncio.get_running_loop().time() + 10
            while first.counters.completed + second.counters.completed < FETCHES:
                assert asyncio.get_running_loop().time() < deadline, (first.counters, second.counters)
                await asyncio.sleep(0.01)
    assert got == [(root / "blob.bin").read_bytes()] * FETCHES
    assert first.counters.completed > 0 and second.counters.completed > 0
    assert first.counters.completed + second.counters.completed == FETCHES


async def test_worker_processes_serve_and_send_their_events_back(root: Path) -> None:
    mine: list[TftpEvent] = []
    theirs: list[TftpEvent] = []
    source = FileSystemSource(root)
    async with TftpServer(source, "127.0.0.1", port=0, reuse_port=True, on_event=mine.append) as server:
        port = server.local_address[1]
        spec = WorkerSpec(
            "127.0.0.1", port, "bootforge.servers.tftp_workers:filesystem_source", {"root": str(root)}
        )
        workers = TftpWorkers(spec, 2, on_event=theirs.append)
        async with workers:
            pids = workers.pids
            got = await fetch_many(port, "blob.bin", 32)
            for _ in range(100):  # events cross a socket; let the loop read them
                if len(mine) + len(theirs) == 32:
                    break
                await asyncio.sleep(0.05)
    assert got == [(root / "blob.bin").read_bytes()] * 32
    assert len(mine) + len(theirs) == 32 and mine and theirs
    assert {(e.filename, e.outcome, e.bytes_sent) for e in theirs} == {("blob.bin", "completed", 5000)}
    assert all(e.client[0] == "127.0.0.1" and isinstance(e.client, tuple) for e in theirs)
    # Counters arrive when the workers stop; stopped workers are gone (reaped).
    assert workers.counters.completed == len(theirs) and workers.bad_messages == 0
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


async def test_a_worker_that_cannot_listen_fails_the_start(root: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:  # no SO_REUSEPORT: exclusive
        taken.bind(("127.0.0.1", 0))
        spec = WorkerSpec(
            "127.0.0.1",
            taken.getsockname()[1],
            "bootforge.servers.tftp_workers:filesystem_source",
            {"root": str(root)},
        )
        workers = TftpWorkers(spec, 1)
        with pytest.raises(RuntimeError, match="exited before it listened"):
            await workers.start()
        assert workers.pids == []


# -- `bootforge serve` with netboot.tftp_workers = 2, in namespaces -------------------------------


def config(tmp_path: Path, boot: Path) -> Path:
    path = tmp_path / "bootforge.toml"
    path.write_text(
        f"""
state_dir = "{tmp_path / "state"}"
listen = "127.0.0.1:6385"
power_sync_interval = 0
enabled_hardware_types = ["fake-hardware"]

[netboot]
address = "10.213.0.1"
dhcp = "full"
dhcp_interfaces = ["eth0"]
tftp = true
tftp_workers = 2
root = "{boot}"

[[netboot.subnets]]
network = "10.213.0.0/24"
pool = "10.213.0.100-10.213.0.150"
lease_time = 600
"""
    )
    return path


@pytest.fixture
def served(netns_lan: Lan, tmp_path: Path) -> Iterator[tuple[Lan, Path, Path]]:
    need("curl", "curl")
    boot = tmp_path / "boot"
    boot.mkdir()
    (boot / "blob.bin").write_bytes(os.urandom(100_000))
    log = tmp_path / "serve.log"
    with serve_in(netns_lan, config(tmp_path, boot), log, ready_tries=300):
        yield netns_lan, boot, log
    # The workers stop with serve (by PID, or at the latest when their channel to it closes).
    for pid in worker_pids(log):
        for _ in range(100):
            if not Path(f"/proc/{pid}").exists():
                break
            time.sleep(0.05)
        assert not Path(f"/proc/{pid}").exists(), f"TFTP worker {pid} outlived bootforge serve"


def worker_pids(log: Path) -> list[int]:
    for line in log.read_text().splitlines():
        if "worker processes share port" in line:
            return [int(p) for p in line.rsplit("[", 1)[1].rstrip("]").split(",")]
    return []


def lease(lan: Lan, tmp_path: Path) -> str:
    busybox = need("busybox", "busybox")
    env = tmp_path / "udhcpc.env"
    script = tmp_path / "udhcpc.sh"
    script.write_text(f'#!/bin/sh\n[ "$1" = bound ] && echo "$ip" >> {env}\n')
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    argv = [busybox, "udhcpc", "-i", "eth0", "-f", "-q", "-n", "-t", "5", "-T", "1", "-s", str(script),
            "-V", PXE_X64, "-x", "0x5d:0007"]  # fmt: skip
    done = lan.client.ns.run(argv, check=False, timeout=30)
    assert done.returncode == 0 and env.exists(), done.stderr
    return env.read_text().split()[-1]


def test_serve_with_tftp_workers_ties_every_transfer_to_the_node(served: Any, tmp_path: Path) -> None:
    lan, boot, log = served
    node = api(lan, "POST", "/v1/nodes", {"driver": "fake-hardware", "name": "rack1-node1"})
    api(lan, "POST", "/v1/ports", {"node_uuid": node["uuid"], "address": lan.client.mac})
    # The netboot view learns the new port at its next refresh (every 2 s); until then bootforge's
    # DHCP ignores the MAC, and udhcpc's own retries (5, 1 s apart) wait for it.
    ip = lease(lan, tmp_path)
    lan.client.ns.ip("addr", "add", f"{ip}/24", "dev", "eth0")
    for i in range(16):  # one curl each: a fresh source port, so the kernel picks a listener anew
        out = tmp_path / f"got{i}"
        done = lan.client.ns.run(["curl", "-sS", "-o", str(out), "tftp://10.213.0.1/blob.bin"], check=False)
        assert done.returncode == 0, done.stderr
        assert out.read_bytes() == (boot / "blob.bin").read_bytes()

    def completed() -> list[str]:
        history = api(lan, "GET", f"/v1/nodes/{node['uuid']}/history?detail=true")["history"]
        tftp = [e["event"] for e in history if e["event_type"] == "tftp"]
        return [t for t in tftp if "tftp blob.bin completed: 100000 bytes" in t]

    # Netboot events are written in batches every 0.5 s: wait for the 16 transfers to land.
    deadline = time.monotonic() + 30
    while len(completed()) < 16 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(completed()) == 16, completed()
    assert len(worker_pids(log)) == 1
    served_by_worker = [
        line for line in log.read_text().splitlines() if "tftp worker" in line and "blob.bin" in line
    ]
    assert served_by_worker, log.read_text()[-3000:]


PARENT = """
import asyncio, sys
from bootforge.servers.tftp_workers import TftpWorkers, WorkerSpec

async def main():
    factory = "bootforge.servers.tftp_workers:filesystem_source"
    spec = WorkerSpec("127.0.0.1", 0, factory, {"root": sys.argv[1]})
    workers = TftpWorkers(spec, 1)
    await workers.start()
    print(workers.pids[0], flush=True)
    await asyncio.sleep(60)

asyncio.run(main())
"""


def test_a_worker_does_not_outlive_a_killed_parent(root: Path) -> None:
    argv = [sys.executable, "-c", PARENT, str(root)]
    with subprocess.Popen(argv, stdout=subprocess.PIPE, text=True) as parent:
        try:
            assert parent.stdout is not None
            pid = int(parent.stdout.readline())
            assert Path(f"/proc/{pid}").exists()
        finally:
            parent.kill()  # no cleanup runs: the worker must notice on its own
            parent.wait(10)
    for _ in range(200):
        if not Path(f"/proc/{pid}").exists():
            break
        time.sleep(0.05)
    assert not Path(f"/proc/{pid}").exists(), "the worker outlived its killed parent"
