"""The virtual-media ISO boots in QEMU on both firmwares, with no network boot at all, and the ramdisk's
agent reaches the API over the static address from the ISO's command line.

The VM has no NIC option ROM (no PXE, no HTTP boot), only the ISO in a CD drive. Its NIC is on
QEMU's user-mode network in restrict mode: the guest reaches nothing but 10.0.2.100:6385, relayed
to a stand-in conductor on 127.0.0.1 that answers the agent's lookup. The time from QEMU's start to
the lookup is printed (not asserted: shared machine).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from support.guestfwd import JsonHandler, guest_forward

from bootforge.agent.netconfig import Interface, StaticNet
from bootforge.drivers.qemu_machine import detect_accel, find_ovmf
from bootforge.drivers.vmedia import kernel_cmdline
from bootforge.images import bootiso
from bootforge.ramdisk import DEFAULT_CACHE, BuildResult, RamdiskError, build

pytestmark = [pytest.mark.qemu, pytest.mark.slow]

QEMU = "qemu-system-x86_64"
MAC = "52:54:00:b0:07:0c"
API = "http://10.0.2.100:6385"
ADDRESS = "10.0.2.77"  # not in the range of QEMU's own DHCP server (10.0.2.15 ...)
TIMEOUT = 240.0  # TCG on a busy 2-core machine: generous, never a measurement


class Lookups:
    def __init__(self) -> None:
        self.queries: list[tuple[float, dict[str, list[str]]]] = []
        self.seen = threading.Event()


def _handler(found: Lookups, node: str) -> type[BaseHTTPRequestHandler]:
    class Handler(JsonHandler):
        timeout = 30

        def do_GET(self) -> None:
            url = urlsplit(self.path)
            if url.path == "/v1/lookup":
                found.queries.append((time.monotonic(), parse_qs(url.query)))
                found.seen.set()
                config = {"agent_token": "t", "poll_timeout": 2}
                self._reply(200, {"node": {"uuid": node, "properties": {}}, "config": config})
            else:
                time.sleep(1.0)  # the agent's command poll: nothing to do
                self._reply(204)

    return Handler


@pytest.fixture
def conductor() -> Iterator[tuple[Lookups, str, int]]:
    found, node = Lookups(), str(uuid.uuid4())
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(found, node))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield found, node, server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def ramdisk(tmp_path_factory: pytest.TempPathFactory) -> BuildResult:
    if shutil.which("apt-get") is None:
        pytest.skip("needs apt-get to download the ramdisk's Debian packages")
    missing = bootiso.missing_tools()
    if missing:
        pytest.skip(f"needs {', '.join(missing)}")
    try:
        DEFAULT_CACHE.mkdir(parents=True, exist_ok=True)
        cache = DEFAULT_CACHE
    except OSError:
        cache = tmp_path_factory.mktemp("ramdisk-cache")
    try:
        return build(tmp_path_factory.mktemp("boot"), cache)
    except RamdiskError as e:
        if "apt" in str(e):
            pytest.skip(f"needs apt downloads of Debian packages: {e}")
        raise


def _firmware_args(firmware: str, work: Path) -> list[str]:
    if firmware == "bios":
        return []
    ovmf = find_ovmf()
    assert ovmf.code is not None and ovmf.vars_template is not None
    shutil.copyfile(ovmf.vars_template, work / "vars.fd")
    return [
        "-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={ovmf.code}",
        "-drive", f"if=pflash,format=raw,unit=1,file={work / 'vars.fd'}",
    ]  # fmt: skip


@pytest.mark.parametrize("firmware", ["bios", "uefi"])
def test_the_iso_boots_without_network_boot_and_the_agent_reaches_the_api(
    firmware: str, ramdisk: BuildResult, conductor: tuple[Lookups, str, int], tmp_path: Path
) -> None:
    if shutil.which(QEMU) is None:
        pytest.skip(f"needs {QEMU} (Debian: qemu-system-x86)")
    found, node, port = conductor
    net = StaticNet((Interface(MAC, (f"{ADDRESS}/24",), ("10.0.2.2",)),), ("10.0.2.3",))
    cmdline = kernel_cmdline(API, node, MAC, ["console=ttyS0,115200n8"], net)
    iso = asyncio.run(
        bootiso.build_boot_iso(ramdisk.kernel, ramdisk.initrd, cmdline, tmp_path / "vmedia.iso")
    )
    print(
        f"\nISO: {iso.size / 2**20:.1f} MiB (EFI image {iso.efi_image_size / 2**20:.1f} MiB)"
        f" built in {iso.seconds:.2f} s"
    )
    serial = tmp_path / "serial.log"
    forward = guest_forward(tmp_path, port)
    argv = [
        QEMU, "-machine", "q35", "-accel", detect_accel(), "-m", "768",
        "-nodefaults", "-display", "none", "-vga", "none", "-serial", f"file:{serial}",
        *_firmware_args(firmware, tmp_path),
        "-drive", f"file={iso.path},format=raw,if=none,id=cd,media=cdrom,readonly=on",
        "-device", "ide-cd,drive=cd,bootindex=1",
        "-netdev", f"user,id=n0,restrict=on,{forward}",
        # romfile= : no option ROM, so neither firmware can boot from this NIC.
        "-device", f"virtio-net-pci,netdev=n0,mac={MAC},romfile=",
    ]  # fmt: skip
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, start_new_session=True)
    try:
        seen = found.seen.wait(TIMEOUT)
        text = serial.read_bytes().decode(errors="replace") if serial.exists() else ""
        assert seen, f"no lookup within {TIMEOUT:.0f} s; console:\n{text[-4000:]}"
        at, query = found.queries[0]
        print(
            f"{firmware}: QEMU start -> agent lookup over the static address:"
            f" {at - t0:.1f} s ({detect_accel()})"
        )
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # QEMU and its relays, by process group
        proc.wait()
    assert query["addresses"][0].split(",")[0] == MAC
    assert query["node_uuid"] == [node]
    assert f"bootforge-netconfig: static eth0 ({MAC}): {ADDRESS}/24" in text
    assert "udhcpc" not in text
    if firmware == "uefi":
        assert "UEFI QEMU DVD-ROM" in text  # OVMF booted the CD's EFI entry
