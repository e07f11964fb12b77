"""The qemu power and management interfaces against a small QMP server that behaves like QEMU.

The fake keeps what matters for the driver's contract: run states, devices with a `bootindex` that
QEMU refuses to duplicate, and the firmware boot order that QEMU snapshots at each reset. Real QEMU
runs in tests/integration/test_qemu_driver.py.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from bootforge.drivers import base, qemu
from bootforge.errors import DriverError

GREETING = {
    "QMP": {"version": {"qemu": {"major": 7, "minor": 2, "micro": 0}, "package": ""}, "capabilities": []}
}
NIC = {"mac", "netdev", "bootindex", "type"}
DISK = {"drive", "bootindex", "type"}


async def messages(reader: asyncio.StreamReader) -> AsyncIterator[dict[str, Any]]:
    """QMP clients send bare JSON objects with no separator, like QEMU's streaming parser accepts."""
    decoder, buf = json.JSONDecoder(), ""
    while chunk := await reader.read(4096):
        buf += chunk.decode()
        while buf.strip():
            try:
                msg, end = decoder.raw_decode(buf.lstrip())
            except ValueError:
                break
            buf = buf.lstrip()[end:]
            yield msg


class FakeQemu:
    def __init__(self, status: str = "prelaunch", obeys_acpi: bool = True, greet: bool = True) -> None:
        self.status = status
        self.obeys_acpi = obeys_acpi
        self.greet = greet
        self.devices = {"nic0": ["virtio-net-pci", NIC, -1], "disk0": ["virtio-blk-pci", DISK, -1]}
        self.macs = {"nic0": "52:54:00:00:00:01"}
        self.bootorder_at_reset: list[list[str]] = []
        self.commands: list[str] = []
        self.actions: dict[str, Any] = {}

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self.greet:
            await reader.read()  # accepted, never greeted: another client holds the monitor
            writer.close()
            return
        send = lambda msg: writer.write(json.dumps(msg).encode() + b"\n")  # noqa: E731
        send(GREETING)
        async for msg in messages(reader):
            cmd, args = msg["execute"], msg.get("arguments") or {}
            self.commands.append(cmd)
            try:
                reply: dict[str, Any] = {"return": self.execute(cmd, args, send)}
            except ValueError as e:
                reply = {"error": {"class": "GenericError", "desc": str(e)}}
            send({**reply, "id": msg["id"]} if "id" in msg else reply)
        writer.close()

    def execute(self, cmd: str, args: dict[str, Any], send: Any) -> Any:
        if cmd in ("qmp_capabilities", "set-action"):
            self.actions.update(args)
            return {}
        if cmd == "query-status":
            return {"status": self.status, "running": self.status == "running"}
        if cmd == "qom-list":
            return self.qom_list(args["path"])
        name = args.get("path", "").rsplit("/", 1)[-1]
        if cmd == "qom-get" and args["property"] == "mac":
            return self.macs[name]
        if cmd == "qom-get":
            return self.devices[name][2]
        if cmd == "qom-set":
            taken = [n for n, d in self.devices.items() if d[2] == args["value"] and n != name]
            if args["value"] >= 0 and taken:
                raise ValueError(f"The bootindex {args['value']} has already been used")
            self.devices[name][2] = args["value"]
            return {}
        return self.power(cmd, send)

    def power(self, cmd: str, send: Any) -> Any:
        if cmd == "system_reset":
            order = sorted((d[2], n) for n, d in self.devices.items() if d[2] >= 0)
            self.bootorder_at_reset.append([n for _, n in order])
            if self.status != "running":
                self.status = "prelaunch"
            send({"event": "RESET", "data": {"guest": False}, "timestamp": {"seconds": 0, "microseconds": 0}})
        elif cmd == "cont":
            if self.status == "shutdown":
                raise ValueError("Resetting the Virtual Machine is required")
            self.status = "running"
        elif cmd == "stop":
            self.status = "paused"
        elif cmd == "system_powerdown" and self.obeys_acpi:
            self.status = "shutdown"
        elif cmd != "system_powerdown":
            raise ValueError(f"The command {cmd} has not been found")
        return {}

    def qom_list(self, path: str) -> list[dict[str, str]]:
        if path == "/machine/peripheral":
            return [{"name": "type", "type": "string"}] + [
                {"name": n, "type": f"child<{d[0]}>"} for n, d in self.devices.items()
            ]
        if path == "/machine/peripheral-anon":
            return [{"name": "type", "type": "string"}]
        return [{"name": p, "type": "x"} for p in sorted(self.devices[path.rsplit("/", 1)[1]][1])]

    def indices(self) -> dict[str, int]:
        return {n: d[2] for n, d in self.devices.items()}


class Node:
    def __init__(self, driver_info: dict[str, Any]) -> None:
        self.driver_info = driver_info
        self.driver_internal_info: dict[str, Any] = {}


class Task:
    def __init__(self, sock: Path) -> None:
        self.node = Node({"qemu_qmp_socket": str(sock)})
        self.ports: list[Any] = []
        self.events: list[tuple[str, str, str]] = []

    async def record(self, event_type: str, message: str, severity: str = "info") -> None:
        self.events.append((event_type, message, severity))

    async def get_ports(self) -> list[Any]:
        return self.ports

    async def save(self) -> None:
        return None


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[FakeQemu, Task]]:
    fake = FakeQemu()
    sock = tmp_path / "qmp.sock"
    server = await asyncio.start_unix_server(fake.serve, path=str(sock))
    async with server:
        yield fake, Task(sock)


async def test_power_on_boots_the_once_device_and_restores_the_persistent_order(
    served: tuple[FakeQemu, Task],
) -> None:
    fake, task = served
    power, mgmt = qemu.QemuPower(), qemu.QemuManagement()
    assert await power.get_power_state(task) == base.POWER_OFF

    await mgmt.set_boot_device(task, "disk", persistent=True)
    assert fake.indices() == {"disk0": 1, "nic0": 2}  # a running QEMU gets a persistent order at once
    await mgmt.set_boot_device(task, "pxe")
    assert fake.indices() == {"disk0": 1, "nic0": 2}  # a one-time device waits for the power action

    await power.set_power_state(task, base.POWER_ON)
    assert fake.bootorder_at_reset == [["nic0", "disk0"]]  # what the firmware reads for this boot
    assert fake.indices() == {"disk0": 1, "nic0": 2}  # what the next reset, even the guest's, uses
    assert await power.get_power_state(task) == base.POWER_ON
    assert fake.actions == {"shutdown": "pause"}  # external VM: a guest poweroff keeps the process
    assert await mgmt.get_boot_device(task) == {"boot_device": "disk", "persistent": True}

    await power.reboot(task)
    assert fake.bootorder_at_reset[-1] == ["disk0", "nic0"]
    assert fake.status == "running"


async def test_external_vm_power_off_is_stop_and_power_on_resets(served: tuple[FakeQemu, Task]) -> None:
    fake, task = served
    power = qemu.QemuPower()
    await power.set_power_state(task, base.POWER_ON)
    await power.set_power_state(task, base.POWER_OFF)
    assert fake.status == "paused" and "quit" not in fake.commands
    assert await power.get_power_state(task) == base.POWER_OFF
    fake.commands.clear()
    await power.set_power_state(task, base.POWER_ON)
    assert fake.commands[-2:] == ["system_reset", "cont"]  # a cold-ish boot, not a resume


async def test_soft_off_obeyed_by_the_guest(served: tuple[FakeQemu, Task]) -> None:
    fake, task = served
    power = qemu.QemuPower()
    await power.set_power_state(task, base.POWER_ON)
    await power.set_power_state(task, base.SOFT_POWER_OFF, timeout=5)
    assert fake.status == "shutdown" and "stop" not in fake.commands
    assert not [e for e in task.events if e[2] == "warning"]
    await power.set_power_state(task, base.SOFT_REBOOT, timeout=5)  # from shutdown: reset, then cont
    assert fake.status == "running"


async def test_soft_off_ignored_by_the_guest_ends_in_a_hard_off(served: tuple[FakeQemu, Task]) -> None:
    fake, task = served
    fake.obeys_acpi = False
    power = qemu.QemuPower()
    await power.set_power_state(task, base.POWER_ON)
    await power.set_power_state(task, base.SOFT_POWER_OFF, timeout=0.6)
    assert fake.status == "paused"
    assert [m for _, m, sev in task.events if sev == "warning"] == [
        "guest ignored the ACPI power button for 1 s; powering off hard"
    ]


async def test_boot_device_of_a_kind_the_vm_lacks(served: tuple[FakeQemu, Task]) -> None:
    _, task = served
    with pytest.raises(DriverError, match="no cdrom boot device"):
        await qemu.QemuManagement().set_boot_device(task, "cdrom", persistent=True)
    assert task.node.driver_internal_info == {}


async def test_boot_device_read_from_the_vm_when_bootforge_set_none(served: tuple[FakeQemu, Task]) -> None:
    fake, task = served
    mgmt = qemu.QemuManagement()
    assert await mgmt.get_boot_device(task) == {"boot_device": None, "persistent": None}
    fake.devices["nic0"][2] = 0
    assert await mgmt.get_boot_device(task) == {"boot_device": "pxe", "persistent": True}


async def test_a_busy_monitor_is_an_error_not_a_hang(tmp_path: Path) -> None:
    sock = tmp_path / "busy.sock"
    server = await asyncio.start_unix_server(FakeQemu(greet=False).serve, path=str(sock))
    async with server:
        with pytest.raises(DriverError, match="did not greet"):
            await qemu.QemuPower(qmp_timeout=0.3).get_power_state(Task(sock))


async def test_no_socket_or_dead_pid_reads_off_and_power_on_explains(tmp_path: Path) -> None:
    task = Task(tmp_path / "absent.sock")
    power = qemu.QemuPower()
    assert await power.get_power_state(task) == base.POWER_OFF
    with pytest.raises(DriverError, match="no qemu_command"):
        await power.set_power_state(task, base.POWER_ON)
    await power.set_power_state(task, base.POWER_OFF)  # already off
    await power.set_power_state(task, base.SOFT_POWER_OFF)
    with pytest.raises(DriverError, match="no qemu_command"):
        await power.reboot(task)


async def test_a_dead_pid_in_the_pid_file_wins_over_a_stale_socket(served: tuple[FakeQemu, Task]) -> None:
    fake, task = served
    fake.status = "running"
    pid_file = Path(task.node.driver_info["qemu_qmp_socket"] + ".pid")
    await asyncio.to_thread(
        pid_file.write_text, f"{os.getpid()}\n"
    )  # alive, but not a QEMU: as after a crash and pid reuse
    task.node.driver_info = {**task.node.driver_info, "qemu_command": ["qemu-system-x86_64"]}
    assert await qemu.QemuPower().get_power_state(task) == base.POWER_OFF
    assert fake.commands == []


async def test_boot_device_pxe_puts_the_nic_of_the_nodes_pxe_port_first(
    served: tuple[FakeQemu, Task],
) -> None:
    fake, task = served
    # nic0 comes first in QEMU's order and the guest's; the node's PXE port is nic1.
    fake.devices["nic1"] = ["e1000", NIC, -1]
    fake.macs["nic1"] = "52:54:00:00:00:02"
    task.ports = [
        SimpleNamespace(address="52:54:00:00:00:01", pxe_enabled=False),
        SimpleNamespace(address="52:54:00:00:00:02", pxe_enabled=True),
    ]
    power, mgmt = qemu.QemuPower(), qemu.QemuManagement()
    await mgmt.set_boot_device(task, "disk", persistent=True)
    assert fake.indices() == {"disk0": 1, "nic0": 2, "nic1": 3}
    await mgmt.set_boot_device(task, "pxe")
    await power.set_power_state(task, base.POWER_ON)
    assert fake.bootorder_at_reset == [["nic1", "nic0", "disk0"]]  # the port's NIC, then the rest
    assert fake.indices() == {"disk0": 1, "nic0": 2, "nic1": 3}  # the persistent order is back
    await mgmt.set_boot_device(task, "pxe", persistent=True)  # applied at once on a running VM
    assert fake.indices() == {"nic1": 1, "nic0": 2, "disk0": 3}


class SeaBiosQemu(FakeQemu):
    """A ROM-firmware VM as QEMU 7.2 runs SeaBIOS (measured, see drivers/qemu.py): once it has run,
    every host reset is followed by `guest_resets` resets of SeaBIOS's own, a few ms apart, and only
    the POST after the last one maps the PCI BARs; that POST reads the order of the last reset. With
    `flash`, the firmware is OVMF (pflash): one POST after the host reset, no resets of its own."""

    def __init__(self, guest_resets: int = 3, flash: bool = False, flash_name: str = "system.flash0") -> None:
        super().__init__(status="running")
        self.flash_name = flash_name
        self.guest_resets = 0 if flash else guest_resets
        self.flash = flash
        self.bars_mapped = True
        self.posted_with: list[str] = []  # the order the last POST read
        self.pci_queries = 0

    def execute(self, cmd: str, args: dict[str, Any], send: Any) -> Any:
        if cmd == "qom-list" and args["path"] == "/machine":
            flash = [{"name": self.flash_name, "type": "child<cfi.pflash01>"}] if self.flash else []
            return [{"name": "type", "type": "string"}, *flash]
        if cmd == "query-pci":
            self.pci_queries += 1
            address = 0xFEB00000 if self.bars_mapped else -1
            return [{"bus": 0, "devices": [{"qdev_id": "nic0", "regions": [{"bar": 1, "address": address}]}]}]
        if cmd == "system_reset":
            self.bars_mapped = False
            result = super().execute(cmd, args, send)
            loop = asyncio.get_running_loop()
            for k in range(1, self.guest_resets + 1):
                loop.call_later(0.03 * k, self._guest_reset, send, k == self.guest_resets)
            if not self.guest_resets:
                loop.call_later(0.03, self._post)
            return result
        return super().execute(cmd, args, send)

    def _order(self) -> list[str]:
        return [n for _, n in sorted((d[2], n) for n, d in self.devices.items() if d[2] >= 0)]

    def _guest_reset(self, send: Any, last: bool) -> None:
        self.bootorder_at_reset.append(self._order())
        send({"event": "RESET", "data": {"guest": True}, "timestamp": {"seconds": 0, "microseconds": 0}})
        if last:
            self._post()

    def _post(self) -> None:
        self.posted_with = self.bootorder_at_reset[-1]
        self.bars_mapped = True


@pytest.mark.parametrize("guest_resets", [1, 3, 6])
async def test_a_running_seabios_vm_posts_with_the_one_time_device(tmp_path: Path, guest_resets: int) -> None:
    """A one-time pxe on a running SeaBIOS VM (a rebuild of an active node): the old order comes back
    only after SeaBIOS's own resets, which the old code raced (it restored right after the host's)."""
    fake = SeaBiosQemu(guest_resets)
    sock = tmp_path / "qmp.sock"
    async with await asyncio.start_unix_server(fake.serve, path=str(sock)):
        task = Task(sock)
        power, mgmt = qemu.QemuPower(), qemu.QemuManagement()
        await mgmt.set_boot_device(task, "disk", persistent=True)
        await mgmt.set_boot_device(task, "pxe")
        await power.reboot(task)
        assert len(fake.bootorder_at_reset) == 1 + guest_resets
        assert fake.posted_with == ["nic0", "disk0"]
        assert fake.indices() == {"disk0": 1, "nic0": 2}  # restored for the OS's own reboots
        assert not [e for e in task.events if e[2] == "warning"], task.events

        # Without a one-time device nothing is restored, so nothing is waited for.
        fake.pci_queries = 0
        await power.reboot(task)
        assert fake.pci_queries == 0


@pytest.mark.parametrize("flash_name", ["system.flash0", "virt.flash0"])  # q35 OVMF, arm64 virt AAVMF
async def test_ovmf_and_a_fresh_process_are_not_waited_for(tmp_path: Path, flash_name: str) -> None:
    fake = SeaBiosQemu(flash=True, flash_name=flash_name)
    sock = tmp_path / "qmp.sock"
    async with await asyncio.start_unix_server(fake.serve, path=str(sock)):
        task = Task(sock)
        power, mgmt = qemu.QemuPower(), qemu.QemuManagement()
        await mgmt.set_boot_device(task, "pxe")
        await power.reboot(task)
        assert fake.bootorder_at_reset == [["nic0", "disk0"]] and fake.pci_queries == 0

        fake.status, fake.flash = "prelaunch", False  # a process started paused: it POSTs once
        await mgmt.set_boot_device(task, "pxe")
        await power.set_power_state(task, base.POWER_ON)
        assert fake.pci_queries == 0


async def test_a_post_that_never_maps_pci_is_a_warning_not_a_hang(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(qemu, "POST_WAIT", 0.3)
    fake = SeaBiosQemu(guest_resets=1)
    fake._post = lambda: None  # type: ignore[method-assign]  # stuck before PCI setup
    sock = tmp_path / "qmp.sock"
    async with await asyncio.start_unix_server(fake.serve, path=str(sock)):
        task = Task(sock)
        await qemu.QemuManagement().set_boot_device(task, "pxe")
        await qemu.QemuPower().reboot(task)
        warnings = [m for _, m, sev in task.events if sev == "warning"]
        assert len(warnings) == 1 and "within 0.3 s" in warnings[0] and "pxe" in warnings[0], warnings
        assert task.node.driver_internal_info["qemu_boot"]["once"] is None
