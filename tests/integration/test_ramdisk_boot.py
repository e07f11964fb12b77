"""The deploy ramdisk boots in QEMU (TCG) and its agent talks to a conductor stand-in on loopback.

`bootforge ramdisk build` output is booted directly (-kernel/-initrd/-append) with user-mode
networking in restrict mode: the guest reaches nothing but 10.0.2.100:6385, which QEMU forwards to a
stdlib HTTP server on 127.0.0.1 (nothing leaves the machine). The server answers the agent's lookup,
hands it an `inspect` command and checks the inventory: the VM's virtio disk (by its serial), its NVMe
and SATA disks (each needs its drivers loaded by the init), its two CPUs and its memory. The time
from QEMU's start to the lookup is printed with the init's own step timestamps; nothing is asserted
about it (shared machine).

Each guest connection is relayed by a small process QEMU starts (guestfwd's ``cmd:`` form): the
``tcp:`` form opens ONE host connection when QEMU starts and feeds every guest connection into it,
so a second HTTP connection (the agent's poll after its lookup) never gets an answer.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from support.guestfwd import JsonHandler, guest_forward

from bootforge.drivers.qemu_machine import detect_accel
from bootforge.ramdisk import DEFAULT_CACHE, BuildResult, RamdiskError, build
from bootforge.ramdisk.builder import AGENT_DIR

pytestmark = [pytest.mark.qemu, pytest.mark.slow]

QEMU = "qemu-system-x86_64"
MAC = "52:54:00:b0:07:01"
API = "http://10.0.2.100:6385"
SERIAL = "TESTSERIAL"
DISK_BYTES = 64 * 2**20
# Disks on the other controllers the ramdisk has drivers for: NVMe, and SATA on q35's AHCI.
NVME_SERIAL = "NVMESERIAL"
NVME_BYTES = 80 * 2**20
SATA_BYTES = 96 * 2**20
MEMORY_MIB = 1024
TIMEOUT = 120.0  # TCG on a busy 2-core machine: generous, never a measurement


@dataclass
class Conductor:
    """What the stand-in conductor saw, with host monotonic times."""

    node: str
    token: str = "test-token"
    lookups: list[tuple[float, dict[str, list[str]]]] = field(default_factory=list)
    results: list[dict[str, Any]] = field(default_factory=list)
    bad_tokens: int = 0
    done: threading.Event = field(default_factory=threading.Event)
    looked_up: threading.Event = field(default_factory=threading.Event)


def _handler(c: Conductor) -> type[BaseHTTPRequestHandler]:
    command = {"id": "cmd-inspect-1", "name": "inspect", "args": {"lldp_wait": 0.5}}

    class Handler(JsonHandler):
        timeout = 60  # an idle keep-alive connection does not hold its thread forever

        def _authorised(self) -> bool:
            if self.headers.get("X-Agent-Token") == c.token:
                return True
            c.bad_tokens += 1
            self._reply(401, {"error": "bad token"})
            return False

        def do_GET(self) -> None:
            url = urlsplit(self.path)
            if url.path == "/v1/lookup":
                c.lookups.append((time.monotonic(), parse_qs(url.query)))
                c.looked_up.set()
                config = {"agent_token": c.token, "poll_timeout": 2, "progress_interval": 1.0}
                self._reply(200, {"node": {"uuid": c.node, "name": "vm", "properties": {}}, "config": config})
            elif url.path == f"/v1/nodes/{c.node}/agent/command":
                if self._authorised():
                    if c.results:
                        time.sleep(1.0)  # a long-poll with nothing to do
                        self._reply(204)
                    else:
                        self._reply(200, command)
            else:
                self._reply(404, {"error": f"no route {url.path}"})

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))) or b"{}")
            if self.path != f"/v1/nodes/{c.node}/agent/command/{command['id']}":
                self._reply(404, {"error": f"no route {self.path}"})
            elif self._authorised():
                if body.get("status") in ("succeeded", "failed"):
                    c.results.append(body)
                    c.done.set()
                self._reply(200, {"accepted": True})

    return Handler


@pytest.fixture
def conductor() -> Iterator[tuple[Conductor, int]]:
    c = Conductor(node=str(uuid.uuid4()))
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(c))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield c, server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("apt-get") is None:
        pytest.skip("needs apt-get to download the ramdisk's Debian packages")
    try:
        DEFAULT_CACHE.mkdir(parents=True, exist_ok=True)
    except OSError:
        return tmp_path_factory.mktemp("ramdisk-cache")
    return DEFAULT_CACHE


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the agent's source: the tree may change while the module's tests run."""
    copy = tmp_path_factory.mktemp("agent") / "agent"
    shutil.copytree(AGENT_DIR, copy, ignore=shutil.ignore_patterns("__pycache__"))
    return copy


@pytest.fixture(scope="module")
def ramdisk(tmp_path_factory: pytest.TempPathFactory, cache: Path, agent: Path) -> BuildResult:
    try:
        result = build(tmp_path_factory.mktemp("boot"), cache, agent_dir=agent)
    except RamdiskError as e:
        if "apt" in str(e):
            pytest.skip(f"needs apt downloads of Debian packages: {e}")
        raise
    mib = 2**20
    print(
        f"\nramdisk: initrd {result.initrd_size / mib:.1f} MiB, kernel {result.kernel_size / mib:.1f} MiB, "
        f"built in {result.seconds:.1f} s"
    )
    return result


@dataclass
class Serial:
    """The guest's serial console, each line with the host time it arrived."""

    lines: list[tuple[float, str]] = field(default_factory=list)

    def read(self, stream: Any) -> None:
        for raw in iter(stream.readline, b""):
            self.lines.append((time.monotonic(), raw.decode(errors="replace").rstrip("\r\n")))

    def text(self) -> str:
        return "\n".join(line for _, line in self.lines)


def qemu_argv(r: BuildResult, node: str, port: int, disks: Path) -> list[str]:
    forward = guest_forward(disks, port)
    args = f"console=ttyS0 bootforge.api={API} bootforge.node={node} BOOTIF={MAC}"
    return [
        QEMU, "-machine", "q35", "-accel", detect_accel(), "-smp", "2", "-m", str(MEMORY_MIB),
        "-nodefaults", "-display", "none", "-vga", "none", "-serial", "stdio",
        "-kernel", str(r.kernel), "-initrd", str(r.initrd), "-append", args,
        "-netdev", f"user,id=n0,restrict=on,{forward}",
        "-device", f"virtio-net-pci,netdev=n0,mac={MAC}",
        "-drive", f"file={disks / 'virtio.raw'},format=raw,if=none,id=d0",
        "-device", f"virtio-blk-pci,drive=d0,serial={SERIAL}",
        "-drive", f"file={disks / 'nvme.raw'},format=raw,if=none,id=d1",
        "-device", f"nvme,drive=d1,serial={NVME_SERIAL}",
        "-drive", f"file={disks / 'sata.raw'},format=raw,if=none,id=d2",
        "-device", "ide-hd,drive=d2,bus=ide.0",
    ]  # fmt: skip


def _init_steps(serial: Serial, t0: float) -> list[str]:
    steps = []
    for at, line in serial.lines:
        m = re.search(r"bootforge-init: \[([\d.]+)\] (.*)", line)
        if m:
            steps.append(f"  host +{at - t0:5.1f} s  guest {float(m.group(1)):5.1f} s  {m.group(2)[:90]}")
    return steps


def test_agent_boots_looks_up_and_inspects(
    ramdisk: BuildResult, conductor: tuple[Conductor, int], tmp_path: Path
) -> None:
    if shutil.which(QEMU) is None:
        pytest.skip(f"needs {QEMU} (Debian: qemu-system-x86)")
    c, port = conductor
    for name, size in (("virtio", DISK_BYTES), ("nvme", NVME_BYTES), ("sata", SATA_BYTES)):
        with (tmp_path / f"{name}.raw").open("wb") as f:
            f.truncate(size)
    serial = Serial()
    t0 = time.monotonic()
    proc = subprocess.Popen(
        qemu_argv(ramdisk, c.node, port, tmp_path),
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    reader = threading.Thread(target=serial.read, args=(proc.stdout,), daemon=True)
    reader.start()
    try:
        looked_up = c.looked_up.wait(TIMEOUT)
        assert looked_up, f"no lookup within {TIMEOUT:.0f} s; console:\n{serial.text()[-4000:]}"
        lookup_at, query = c.lookups[0]
        print(f"\nQEMU start -> agent lookup: {lookup_at - t0:.1f} s ({detect_accel()})")
        print("\n".join(_init_steps(serial, t0)))
        assert query["addresses"][0].split(",")[0] == MAC
        assert query["node_uuid"] == [c.node]
        assert c.done.wait(TIMEOUT), f"no inspect result; console:\n{serial.text()[-4000:]}"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # QEMU and the relays it started, by process group
        proc.wait()
        reader.join(10)
        assert proc.stdout is not None
        proc.stdout.close()
    result = c.results[0]
    assert result["status"] == "succeeded", result
    inventory = result["result"]["inventory"]
    disks = [d for d in inventory["disks"] if d["serial"] == SERIAL]
    assert len(disks) == 1, inventory["disks"]
    assert disks[0]["size"] == DISK_BYTES
    assert disks[0]["name"].startswith("/dev/vd")
    by_name = {d["name"]: d for d in inventory["disks"]}
    assert by_name["/dev/nvme0n1"]["size"] == NVME_BYTES
    assert by_name["/dev/nvme0n1"]["serial"] == NVME_SERIAL
    assert by_name["/dev/sda"]["size"] == SATA_BYTES
    assert inventory["cpu"]["count"] == 2
    assert 0.8 * MEMORY_MIB * 2**20 < inventory["memory"]["total"] <= MEMORY_MIB * 2**20
    assert MAC in [i["mac_address"] for i in inventory["interfaces"]]
    assert c.bad_tokens == 0


def test_a_rebuild_is_byte_identical(ramdisk: BuildResult, cache: Path, agent: Path, tmp_path: Path) -> None:
    again = build(tmp_path, cache, agent_dir=agent)
    print(f"\nrebuild with a warm cache: {again.seconds:.1f} s")
    assert again.initrd.read_bytes() == ramdisk.initrd.read_bytes()
    assert again.kernel.read_bytes() == ramdisk.kernel.read_bytes()
