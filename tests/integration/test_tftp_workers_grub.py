"""TFTP worker processes serve a node's grub.cfg, which only the parent can render (issue #12).

Debian's signed GRUB reads its per-node config as the TFTP virtual file grub/grub.cfg-01-<mac>
(Secure Boot chain). With `netboot.tftp_workers > 1` the kernel hands a request to any of the
processes sharing the port; a worker has no view of the nodes, so it asks the parent. Here the
workers serve the port alone (the parent's own listener is closed once they listen), so every
fetch is a worker's, and the clients are curl and tftp-hpa's `tftp`.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from pathlib import Path
from typing import Any

from support.tools import need
from test_tftp_workers import api, lease, served

from bootforge.cli.netboot import _NODE_GRUB_CFG, grub_files
from bootforge.netboot.tftp import ClientAddress, FileSystemSource
from bootforge.servers.tftp import TftpServer
from bootforge.servers.tftp_workers import TftpWorkers, WorkerSpec

__all__ = ["served"]  # the fixture, imported to apply here too

BOOTSTRAP = "# bootstrap\nconfigfile $prefix/grub.cfg-01-...\n"
MAC = "52:54:00:12:34:56"
NODE_FILE = "grub/grub.cfg-01-52-54-00-12-34-56"


def curl(port: int, path: str) -> tuple[int, bytes]:
    done = subprocess.run(
        [need("curl", "curl"), "-sS", "--max-time", "10", f"tftp://127.0.0.1:{port}/{path}"],
        capture_output=True,
        timeout=20,
    )
    return done.returncode, done.stdout


def tftp_hpa(port: int, path: str, out: Path) -> bytes:
    subprocess.run(
        [need("tftp", "tftp-hpa"), "-m", "binary", "127.0.0.1", str(port), "-c", "get", path, str(out)],
        check=True,
        capture_output=True,
        timeout=20,
    )
    return out.read_bytes()


async def workers_alone(
    spec_args: dict[str, object], tmp_path: Path, virtual: object
) -> tuple[TftpWorkers, int]:
    """Two workers on a port of their own: a reuse_port listener takes a free port, the workers join
    it, then it closes, so only the workers answer."""
    async with TftpServer(FileSystemSource(tmp_path), "127.0.0.1", port=0, reuse_port=True) as holder:
        port = holder.local_address[1]
        spec = WorkerSpec(
            "127.0.0.1",
            port,
            "bootforge.cli.netboot:tftp_source",
            {"found": {}, "root": str(tmp_path), "bootstrap": BOOTSTRAP},
            virtual_from_parent=_NODE_GRUB_CFG.pattern,
            **spec_args,  # type: ignore[arg-type]
        )
        workers = TftpWorkers(spec, 2, virtual=virtual)  # type: ignore[arg-type]
        await workers.start()
    return workers, port


async def test_workers_serve_the_nodes_grub_cfg_rendered_by_the_parent(tmp_path: Path) -> None:
    asked: list[tuple[str, str]] = []

    def node_config(mac: str, ip: str) -> str:
        asked.append((mac, ip))
        return f"# node config for {mac} asked from {ip}\nlinux (tftp,10.0.0.1)/bootforge/vmlinuz\n"

    workers, port = await workers_alone({}, tmp_path, grub_files(BOOTSTRAP, node_config))
    try:
        expected = f"# node config for {MAC} asked from 127.0.0.1\nlinux (tftp,10.0.0.1)/bootforge/vmlinuz\n"
        # Several fetches from fresh client ports, so both workers get some of them.
        results = await asyncio.gather(*(asyncio.to_thread(curl, port, NODE_FILE) for _ in range(6)))
        assert results == [(0, expected.encode())] * 6
        got = await asyncio.to_thread(tftp_hpa, port, NODE_FILE, tmp_path / "hpa")
        assert got == expected.encode()
        # The bootstrap is the worker's own; a path the parent renders nothing for is missing.
        assert await asyncio.to_thread(curl, port, "grub/grub.cfg") == (0, BOOTSTRAP.encode())
        code, _ = await asyncio.to_thread(curl, port, "grub/grub.cfg-01-zz")
        assert code != 0
        assert workers.virtual_answered == 7
        assert asked == [(MAC, "127.0.0.1")] * 7
    finally:
        await workers.aclose()
    assert workers.bad_messages == 0


async def test_a_parent_that_does_not_answer_in_time_costs_one_refusal(tmp_path: Path) -> None:
    slow = {"first": True}

    def virtual(path: str, client: ClientAddress) -> bytes | None:
        if slow.pop("first", False):
            time.sleep(1.0)  # the parent's loop stalls past the worker's 0.3 s wait
        return f"{path} for {client[0]}\n".encode()

    workers, port = await workers_alone({"virtual_timeout": 0.3}, tmp_path, virtual)
    try:
        code, _ = await asyncio.to_thread(curl, port, NODE_FILE)
        assert code != 0  # refused (file not found), not hung
        # The late answer to the first request is not taken for the next one.
        for _ in range(3):
            assert await asyncio.to_thread(curl, port, NODE_FILE) == (
                0,
                f"{NODE_FILE} for 127.0.0.1\n".encode(),
            )
    finally:
        await workers.aclose()


# -- `bootforge serve` with netboot.tftp_workers = 2 (namespaces; fixtures from test_tftp_workers) ---


def test_serve_with_tftp_workers_serves_every_fetch_of_the_nodes_grub_cfg(
    served: Any, tmp_path: Path
) -> None:
    lan, _, log = served
    node = api(lan, "POST", "/v1/nodes", {"driver": "fake-hardware", "name": "sb-node1"})
    api(lan, "POST", "/v1/ports", {"node_uuid": node["uuid"], "address": lan.client.mac})
    ip = lease(lan, tmp_path)
    lan.client.ns.ip("addr", "add", f"{ip}/24", "dev", "eth0")
    name = "grub/grub.cfg-01-" + lan.client.mac.replace(":", "-")
    got = set()
    for i in range(16):  # one curl each: a fresh source port, so the kernel picks a listener anew
        out = tmp_path / f"cfg{i}"
        done = lan.client.ns.run(["curl", "-sS", "-o", str(out), f"tftp://10.213.0.1/{name}"], check=False)
        assert done.returncode == 0, done.stderr
        got.add(out.read_text())
    # The same config whichever process served it: the node is enrolled, not deploying, so it is
    # bootforge's refusal (a GRUB script that says so and retries), rendered by the parent.
    assert len(got) == 1 and "nothing to boot" in got.pop()
    served_by_worker = [
        line for line in log.read_text().splitlines() if "tftp worker" in line and "grub.cfg-01" in line
    ]
    assert served_by_worker, log.read_text()[-3000:]
