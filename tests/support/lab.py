"""Labs for end-to-end tests: real QEMU VMs network-booting from a real `bootforge serve`.

`make_lab(vms=..., firmware=...)` builds a :class:`bootforge.lab.lab.Lab` in the test's tmp dir and
always takes it down at teardown, pass or fail. :class:`LabHandle` adds what tests need: API calls,
console waits (a line matching a pattern, with a timeout, from an offset), the node timeline.

TEST-ONLY: :meth:`LabHandle.serve_ramdisk` writes a node's provision state straight into the lab's
database ("inspect wait"). The network-boot tests use the probe ramdisk (quick to build, no agent:
it only proves that each firmware's boot chain reaches the API), and they power the VMs on themselves
to time the boot; the `inspect` verb would power them on and then wait for an agent that the probe
does not have. The conductor leaves a node in a wait state alone until the wait times out (30 min by
default), and the netboot view serves the ramdisk to any node in such a state. Product code has no
hook for it. The deploy tests (test_lab_deploy.py) go through the API only, with the agent ramdisk.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import sqlite3
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from bootforge.drivers import qemu_machine as vm
from bootforge.lab import netns, ramdisk, sample_os
from bootforge.lab.lab import ADDRESS, Lab, LabError, VmRecord

from .netns import netns_unavailable_reason

BOOT_TIMEOUT = 300.0  # one VM from power on to the ramdisk's API call; TCG on a shared 2-core host
# A provisioning step that boots the deploy ramdisk: firmware, iPXE, the ramdisk and the agent's work.
RAMDISK_TIMEOUT = 420.0
DISK_MARKER = "bootforge-lab-disk: booted from the local disk"
OVMF_DISK_START = re.compile(r'BdsDxe: starting Boot[0-9A-F]{4} "UEFI Misc Device')


def lab_unavailable_reason(firmware: str = "bios", dhcp: str = "full") -> str | None:
    reason = netns_unavailable_reason()
    if reason is not None:
        return reason
    for binary, package in (
        (vm.DEFAULT_BINARY, "qemu-system-x86"),
        ("qemu-img", "qemu-utils"),
        ("dpkg-deb", "dpkg"),
        ("apt-get", "apt"),
    ):
        if shutil.which(binary) is None:
            return f"needs {binary} (Debian package {package})"
    if dhcp == "proxy" and shutil.which("dnsmasq") is None:
        return "needs dnsmasq (Debian package dnsmasq-base)"
    if firmware != "bios":
        try:
            vm.find_ovmf()
        except vm.QemuError:
            return "needs OVMF (Debian package ovmf)"
    try:
        ramdisk.build()
    except ramdisk.RamdiskError as e:
        return f"needs the lab ramdisk's Debian packages (linux-image-amd64, busybox-static): {e}"
    return None


@dataclass
class LabHandle:
    lab: Lab
    api: httpx.Client

    @property
    def vms(self) -> list[VmRecord]:
        return self.lab.state.vms

    def vm(self, name: str) -> VmRecord:
        return self.lab.vm(name)

    def node(self, rec: VmRecord) -> dict[str, Any]:
        r = self.api.get(f"/v1/nodes/{rec.node}")
        assert r.status_code == 200, r.text
        return dict(r.json())

    def power(self, rec: VmRecord, target: str) -> None:
        self.lab.power(self.api, rec, target)

    def set_boot_device(self, rec: VmRecord, device: str, persistent: bool = False) -> None:
        body = {"boot_device": device, "persistent": persistent}
        r = self.api.put(f"/v1/nodes/{rec.node}/management/boot_device", json=body)
        assert r.status_code == 204, r.text

    def history(self, rec: VmRecord, event_type: str | None = None) -> list[dict[str, Any]]:
        r = self.api.get(f"/v1/nodes/{rec.node}/history?detail=true")
        assert r.status_code == 200, r.text
        events = r.json()["history"]
        return [e for e in events if event_type is None or e.get("event_type") == event_type]

    def serve_ramdisk(self, *recs: VmRecord) -> None:
        """TEST-ONLY (see the module docstring): put nodes into "inspect wait" in the database, with
        a ramdisk boot id, as boot_ramdisk saves one before the power-on (its token is in the script)."""
        db = Path(self.lab.state.dir) / "serve" / "bootforge.sqlite"
        with sqlite3.connect(db, timeout=30) as conn:
            for rec in recs:
                conn.execute(
                    "UPDATE nodes SET provision_state = 'inspect wait', target_provision_state = "
                    "'manageable', driver_internal_info = json_set(COALESCE(driver_internal_info, '{}'), "
                    "'$.agent_boot', ?) WHERE uuid = ? AND reservation IS NULL",
                    (str(uuid.uuid4()), rec.node),
                )
        for rec in recs:
            self.wait_ramdisk_script(rec)

    def wait_ramdisk_script(self, rec: VmRecord, timeout: float = 30.0) -> None:
        """Until the netboot view hands this VM the ramdisk. With bootforge's DHCP (full), the script
        (it carries the boot token) goes only to the address leased to the VM's MAC, which this fetch
        from the bridge address is not: the view is ready once it refuses the fetch for that reason."""

        def ready() -> bool:
            if "ramdisk" in self.boot_script(rec):
                return True
            return any("did not lease" in e["event"] for e in self.history(rec, "boot"))

        wait_until(ready, timeout, f"{rec.name}'s boot script hands out the ramdisk")

    def boot_script(self, rec: VmRecord) -> str:
        """The iPXE script bootforge's HTTP boot server gives this VM now, fetched inside the lab."""
        sock = netns.open_socket_in(self.lab.state.netns, socket.AF_INET, socket.SOCK_STREAM)
        with sock:
            sock.settimeout(10)
            sock.connect((ADDRESS, 8080))
            sock.sendall(f"GET /boot/ipxe?mac={rec.mac} HTTP/1.0\r\nHost: {ADDRESS}\r\n\r\n".encode())
            chunks = []
            while data := sock.recv(65536):
                chunks.append(data)
        return b"".join(chunks).decode(errors="replace")

    def timeline_fence(self, rec: VmRecord, timeout: float = 30.0) -> None:
        """Return once every netboot event emitted so far is on the node's timeline.

        The test causes one more (a boot-script fetch) and waits for it to show: the server writes
        events in the order they were emitted, so everything before the fence has landed too."""
        before = len(self.history(rec, "http"))
        self.boot_script(rec)
        wait_until(lambda: len(self.history(rec, "http")) > before, timeout, f"{rec.name}'s timeline fence")

    def wait_boot_script(self, rec: VmRecord, text: str, timeout: float = 30.0) -> None:
        # The netboot view refreshes from the database every few seconds.
        wait_until(lambda: text in self.boot_script(rec), timeout, f"{rec.name}'s boot script says {text!r}")

    def write_disk(self, rec: VmRecord, image: Path) -> None:
        """Replace the VM's (powered off) disk with `image`, converted to its qcow2."""
        subprocess.run(
            ["qemu-img", "convert", "-O", "qcow2", str(image), str(rec.disk)],
            check=True,
            capture_output=True,
            timeout=120,
        )

    def qemu_pid(self, rec: VmRecord) -> int | None:
        pid = vm.read_pid(rec.pid_file)
        return pid if pid is not None and vm.pid_alive(pid) else None

    def verb(self, rec: VmRecord, target: str, **body: Any) -> None:
        r = self.api.put(f"/v1/nodes/{rec.node}/states/provision", json={"target": target, **body})
        assert r.status_code == 202, r.text

    def wait_state(self, rec: VmRecord, want: str, timeout: float) -> dict[str, Any]:
        """The node once it is `want` and unlocked; fails at once (with its last events) if it failed."""
        deadline = time.monotonic() + timeout
        while True:
            n = self.node(rec)
            if n["provision_state"] == want and n["reservation"] is None:
                return n
            failed = n["provision_state"].endswith("failed") and n["provision_state"] != want
            if failed or time.monotonic() > deadline:
                events = [e["event"] for e in self.history(rec)][-15:]
                pytest.fail(
                    f"node is {n['provision_state']} (wanted {want}): {n['last_error']}\n" + "\n".join(events)
                )
            time.sleep(1)

    def raw_disk(self, rec: VmRecord, work: Path) -> Path:
        """A raw copy of the VM's (powered off) disk, for the checks in support.disk_check."""
        raw = work / "disk.raw"
        subprocess.run(
            ["qemu-img", "convert", "-O", "raw", str(rec.disk), str(raw)],
            check=True,
            capture_output=True,
            timeout=120,
        )
        return raw

    def deploy_sample_os(self, rec: VmRecord, image: str, user_data: str, boot_timeout: float) -> None:
        """Deploy `image` (a sample OS in the catalogue) with `user_data` in its config drive: the node
        must become active after the handoff, and the OS boot from the disk and print the user data."""
        patch = [{"op": "add", "path": "/instance_info/image_source", "value": image}]
        assert self.api.patch(f"/v1/nodes/{rec.node}", json=patch).status_code == 200
        since = console_offset(rec)
        self.verb(rec, "active", configdrive={"user_data": user_data})
        self.wait_state(rec, "active", 300)
        wait_console(rec, sample_os.BOOTED_MARKER, boot_timeout, since)
        line = wait_console(rec, sample_os.USER_DATA_MARKER, 60, since)
        assert line.strip().endswith(sample_os.USER_DATA_MARKER + user_data), line
        assert any("handoff seen" in e["event"] for e in self.history(rec))


def console_offset(rec: VmRecord) -> int:
    try:
        return rec.console.stat().st_size
    except FileNotFoundError:
        return 0


def wait_console(rec: VmRecord, pattern: str | re.Pattern[str], timeout: float, since: int = 0) -> str:
    """The first console line after byte `since` that matches; fails with the console's tail."""
    regex = re.compile(re.escape(pattern)) if isinstance(pattern, str) else pattern
    deadline = time.monotonic() + timeout
    while True:
        try:
            with open(rec.console, "rb") as f:
                f.seek(since)
                text = f.read().decode(errors="replace")
        except FileNotFoundError:
            text = ""
        for line in text.splitlines():
            if regex.search(line):
                return line
        if time.monotonic() >= deadline:
            tail = "\n".join(text.splitlines()[-25:])
            pytest.fail(f"{rec.name}: no console line matching {regex.pattern!r} in {timeout:.0f} s:\n{tail}")
        time.sleep(0.5)


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting until {what}")
        time.sleep(0.5)


# A BIOS boot sector that writes DISK_MARKER to COM1 and halts (hand-assembled 16-bit code):
#   cli; xor ax,ax; mov ds,ax; mov si,msg; mov dx,0x3f8
#   next: lodsb; test al,al; jz halt; out dx,al; jmp next
#   halt: hlt; jmp halt
_BOOT_CODE = bytes.fromhex("fa31c08ed8be167cbaf803ac84c07403eeebf8f4ebfd")


def bootable_disk(work: Path, efi_app: Path) -> Path:
    """A raw disk that boots on both firmwares without the network, each leaving a console mark.

    QEMU's vvfat driver makes an MBR disk with one FAT partition holding \\EFI\\BOOT\\BOOTX64.EFI
    (`efi_app`: Debian's kernel, whose EFI stub OVMF starts; OVMF logs "starting ... UEFI Misc
    Device"). The MBR's boot code is replaced by _BOOT_CODE, which SeaBIOS runs.
    """
    esp = work / "esp"
    (esp / "EFI" / "BOOT").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(efi_app, esp / "EFI" / "BOOT" / "BOOTX64.EFI")
    raw = work / "disk.raw"
    subprocess.run(
        ["qemu-img", "convert", "-O", "raw", f"fat:{esp}", str(raw)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    code = _BOOT_CODE + DISK_MARKER.encode() + b"\r\n\0"
    assert len(code) <= 440  # the partition table starts at 446 (disk signature at 440)
    with open(raw, "r+b") as f:
        f.write(code)
    return raw


@dataclass
class LabFactory:
    root: Path
    labs: list[Lab] = field(default_factory=list)
    clients: list[httpx.Client] = field(default_factory=list)

    def __call__(
        self,
        vms: int = 1,
        firmware: str = "bios",
        memory_mib: int = 512,
        dhcp: str = "full",
        ramdisk: str = "probe",
        bmc: str = "qemu",
        ipv6: bool = False,
    ) -> LabHandle:
        reason = lab_unavailable_reason(firmware, dhcp)
        if reason is None and ipv6 and dhcp == "proxy" and shutil.which("kea-dhcp6") is None:
            reason = "needs kea-dhcp6 (Debian package kea-dhcp6-server)"
        if reason is not None:
            pytest.skip(reason)
        directory = self.root / f"lab{len(self.labs)}"
        try:
            lab = Lab.up(
                directory, vms, firmware, memory_mib, dhcp, start=False, ramdisk=ramdisk, bmc=bmc, ipv6=ipv6
            )
        except LabError as e:
            pytest.fail(f"lab up failed: {e}")
        self.labs.append(lab)
        client = lab.client()
        self.clients.append(client)
        return LabHandle(lab, client)

    def close(self) -> None:
        for client in self.clients:
            client.close()
        for lab in reversed(self.labs):
            keep = os.environ.get("BOOTFORGE_LAB_KEEP_LOGS")
            if keep:  # for debugging a failure: copy consoles and logs out before everything goes
                keep_logs(lab, Path(keep))
            lab.down()


def keep_logs(lab: Lab, target: Path) -> None:
    dest = target / Path(lab.state.dir).name
    dest.mkdir(parents=True, exist_ok=True)
    for log in Path(lab.state.dir).glob("*.log"):
        shutil.copy(log, dest)
    for rec in lab.state.vms:
        if rec.console.exists():
            shutil.copy(rec.console, dest / f"{rec.name}-console.log")


@pytest.fixture
def make_lab(tmp_path: Path) -> Iterator[LabFactory]:
    """Build labs with `make_lab(vms=N, firmware=..., dhcp=...)`; all are taken down at teardown."""
    factory = LabFactory(tmp_path)
    try:
        yield factory
    finally:
        factory.close()
