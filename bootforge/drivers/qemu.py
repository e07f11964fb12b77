"""The `qemu` hardware type: QEMU VMs as bare-metal nodes, controlled over QMP (the VM's "BMC").

Power model. A node's VM is either *owned* (driver_info has `qemu_command`: bootforge may start the
process) or *external* (only `qemu_qmp_socket`: someone else runs the process):

* owned: power off ends the process (QMP `quit`, then SIGTERM/SIGKILL by pid if it hangs) and power
  on starts it again from `qemu_command`. A powered-off VM holds no memory or CPU threads, a crashed
  QEMU is simply "off" and recovers on power on, each power on is a cold boot, and a changed
  `qemu_boot_mode` (firmware) applies at the next power on. The OVMF variable store and the serial
  log are files that outlive the process, so nothing the node "remembers" is lost.
* external: the process must be kept, so power off is `stop` (vCPUs frozen), and bootforge sets
  QEMU's shutdown action to `pause` so that a guest shutting itself down leaves a process in state
  `shutdown` that can be powered on again, not an exited one.

Power state comes from `query-status`: `running` (and ACPI-suspended) is "power on"; paused,
shutdown, prelaunch, a missing socket or a dead process are "power off", never an exception. Power on
and reboot both end in `system_reset` (then `cont`), which is also how boot devices take effect:

Boot devices. QEMU computes the firmware's boot order (fw_cfg `bootorder`, read by SeaBIOS and OVMF)
from the devices' `bootindex` properties *at each reset*, and `bootindex` can be changed at runtime
with `qom-set`. So: set the order, `system_reset`, wait for the RESET event, and the firmware boots
in that order. A one-time device is set before the reset and the previous order put back once the
firmware has its snapshot, so the next reset (even one the guest does itself) uses the restored
order. "Once the firmware has its snapshot" is right after our RESET event, except for SeaBIOS on a
VM that has run before: QEMU does not map the BIOS ROM back over SeaBIOS's shadow copy on a reset,
so SeaBIOS finds it has already run, restores itself and resets the machine again (RESET events
with guest=true from some 30 ms later; two to six of them in a row, measured on QEMU 7.2, as its
reset requests race QEMU's main loop) and POSTs after the last one, with the order QEMU snapshots
then. Putting the old order back right after our own reset booted the disk instead of the one-time
pxe device now and then (a rebuild or rescue of an `active` VM). So for a ROM-firmware VM that is
not fresh, the order is restored only once a POST has mapped the PCI devices' BARs (`query-pci`):
every reset unmaps them, SeaBIOS's restore-and-reset path does not map them, and SeaBIOS reads the
boot order (boot_init) before it sets up PCI. OVMF (pflash) and a fresh process (prelaunch) POST
once, after our reset. One-time devices apply to the next power on or reboot done by bootforge;
persistent ones also take effect at once on a running VM (at its next reset).
Every device with a `bootindex` property gets an index, the requested kind first and the others
after it in their previous order, so the rest stay fallbacks in a known order on both firmwares.
For `pxe`, the NICs whose MAC is one of the node's PXE-enabled ports come first: OVMF tries PXEv4,
PXEv6, HTTPv4 and HTTPv6 on each NIC in turn, some 250 s on a NIC with no boot server behind it.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Callable, Collection, Mapping
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from qemu.qmp import ConnectError, EventListener, ExecInterruptedError, ExecuteError, QMPClient, QMPError

from bootforge.drivers import base
from bootforge.drivers import qemu_machine as vm
from bootforge.drivers.base import Task
from bootforge.errors import DriverError, InvalidInput

__all__ = [
    "PROPERTIES",
    "BootDevice",
    "QemuInfo",
    "QemuManagement",
    "QemuPower",
    "VmGone",
    "classify_device",
    "parse_driver_info",
    "plan_order",
    "power_state_from_status",
    "start_process",
]

PROPERTIES = {
    "qemu_qmp_socket": "Path of the VM's QMP unix socket (QEMU -qmp unix:PATH,server=on,wait=off). Required.",
    "qemu_command": "How to start the VM when it is off: a JSON list (argv) or the path of a VM definition "
    "file (JSON, see bootforge.drivers.qemu_machine.VmDefinition). With it, power off ends the process "
    "and power on starts it; without it, the process is kept and power off pauses it. Optional.",
    "qemu_pid_file": "Path of the QEMU pid file. Default with qemu_command: <qemu_qmp_socket>.pid. Optional.",
    "qemu_boot_mode": "bios or uefi: the firmware a VM definition file starts with. Optional.",
}
BOOT_KINDS = ("pxe", "disk", "cdrom")
_KIND_HELP = {"pxe": "a NIC", "disk": "a disk with a drive", "cdrom": "an ide-cd or scsi-cd device"}
_ON_STATES = frozenset({"running", "suspended"})  # suspended = guest in ACPI S3: still powered
_BOOT_KEY = "qemu_boot"  # driver_internal_info: {"persistent": kind | None, "once": kind | None}
QMP_TIMEOUT = 10.0
START_TIMEOUT = 30.0
QUIT_GRACE = 10.0
SOFT_POLL = 0.5
# SeaBIOS after a reset: how long its POST may take to reach PCI setup, and how often to look.
POST_WAIT = 30.0
POST_POLL = 0.05
# The first pflash device as each machine type names it (q35/pc; virt, for arm64 with AAVMF).
FLASH0 = ("system.flash0", "virt.flash0")


@dataclass(frozen=True)
class QemuInfo:
    qmp_socket: Path
    argv: list[str] | None = None
    definition: Path | None = None
    pid_file: Path | None = None
    boot_mode: str | None = None

    @property
    def owned(self) -> bool:
        """bootforge may end and start the process."""
        return self.argv is not None or self.definition is not None


def parse_driver_info(info: Mapping[str, Any]) -> QemuInfo:
    """driver_info -> QemuInfo, without touching the VM or reading files; errors name the key."""
    sock = info.get("qemu_qmp_socket")
    if not isinstance(sock, str) or not sock:
        raise _invalid("qemu_qmp_socket", "is required: the path of the VM's QMP unix socket")
    argv, definition = _parse_command(info.get("qemu_command"))
    mode = info.get("qemu_boot_mode")
    if mode is not None and mode not in ("bios", "uefi"):
        raise _invalid("qemu_boot_mode", f"must be bios or uefi, not {mode!r}")
    if mode is not None and definition is None:
        raise _invalid("qemu_boot_mode", "only applies to a VM definition file in qemu_command")
    pid = info.get("qemu_pid_file")
    if pid is not None and (not isinstance(pid, str) or not pid):
        raise _invalid("qemu_pid_file", "must be a path")
    pid_file = Path(pid) if pid else (Path(sock + ".pid") if argv or definition else None)
    return QemuInfo(Path(sock), argv, definition, pid_file, mode)


def _parse_command(value: Any) -> tuple[list[str] | None, Path | None]:
    if value is None or value == "":
        return None, None
    if isinstance(value, str) and value.lstrip().startswith("["):
        try:
            value = json.loads(value)
        except ValueError as e:
            raise _invalid("qemu_command", f"is not a valid JSON list: {e}") from None
    if isinstance(value, str):
        return None, Path(value)
    if not isinstance(value, list) or not value or not all(isinstance(a, str) for a in value):
        raise _invalid("qemu_command", "must be a non-empty list of strings or a VM definition path")
    for bad in ("-nographic", "-daemonize", "-qmp", "-pidfile"):
        if bad in value:
            raise _invalid("qemu_command", f"must not contain {bad}: bootforge adds its own control options")
    return list(value), None


def _invalid(key: str, why: str) -> InvalidInput:
    return InvalidInput(f"qemu driver_info {key} {why}", "driver_info")


def power_state_from_status(status: str | None) -> str:
    """QMP query-status (None: no process / no socket) -> bootforge power state."""
    return base.POWER_ON if status in _ON_STATES else base.POWER_OFF


@dataclass(frozen=True)
class BootDevice:
    path: str  # QOM path, e.g. /machine/peripheral/nic0
    kind: str | None  # pxe / disk / cdrom, None for a bootable device of another kind
    index: int  # -1: not in the boot order
    mac: str | None = None  # a NIC's MAC, lower case


def classify_device(qom_type: str, props: set[str]) -> str | None:
    if qom_type in ("ide-cd", "scsi-cd") or qom_type.endswith("-cd"):
        return "cdrom"
    if "mac" in props and "netdev" in props:
        return "pxe"
    if "drive" in props:
        return "disk"
    return None


def plan_order(devices: list[BootDevice], first: str, pxe_macs: Collection[str] = ()) -> dict[str, int]:
    """New bootindex per device: every device of kind `first`, then the rest, each in its old order.
    For `pxe`, the NICs with a MAC in `pxe_macs` (the node's PXE ports) go before the other NICs."""
    if not any(d.kind == first for d in devices):
        found = ", ".join(f"{d.path} ({d.kind or 'other'})" for d in devices) or "none"
        raise DriverError(
            f"the VM has no {first} boot device ({_KIND_HELP[first]}); bootable devices: {found}"
        )
    macs = {m.lower() for m in pxe_macs} if first == "pxe" else set()

    def port_nic_first(d: BootDevice) -> bool:
        return bool(macs) and (d.mac or "").lower() not in macs

    ordered = sorted(
        devices, key=lambda d: (d.kind != first, port_nic_first(d), d.index < 0, d.index, d.path)
    )
    return {d.path: i + 1 for i, d in enumerate(ordered)}


class VmGone(Exception):
    """No QEMU process answers on the VM's QMP socket (never started, ended, or hung up)."""


class _Session:
    """One QMP connection; every command has a timeout and QMP errors become DriverError."""

    def __init__(self, client: QMPClient, path: Path, timeout: float) -> None:
        self.client = client
        self.socket = path
        self.timeout = timeout

    async def run(self, cmd: str, args: Mapping[str, object] | None = None) -> Any:
        try:
            return await asyncio.wait_for(self.client.execute(cmd, args), self.timeout)
        except ExecuteError as e:
            raise DriverError(f"QMP {cmd} on {self.socket} failed: {e.error_class}: {e}") from None
        except TimeoutError:
            raise DriverError(f"QMP {cmd} on {self.socket}: no answer within {self.timeout:.0f} s") from None
        except (ExecInterruptedError, EOFError, OSError, QMPError) as e:
            raise VmGone(f"QMP {cmd} on {self.socket}: connection lost ({type(e).__name__})") from None

    async def reset(self) -> None:
        """system_reset, returning once QEMU has reset (and so recomputed the firmware boot order)."""
        listener = EventListener(("RESET",))
        with self.client.listen(listener):
            await self.run("system_reset")
            try:
                await asyncio.wait_for(listener.get(), self.timeout)
            except TimeoutError:
                raise DriverError(f"no RESET event from {self.socket} after system_reset") from None

    async def wait_pci_mapped(self, timeout: float) -> bool:
        """Until a POST has mapped the PCI BARs since the last reset (see the module docstring);
        False if none did within `timeout` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not _bars_mapped(await self.run("query-pci")):
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(POST_POLL)
        return True

    async def firmware_in_flash(self) -> bool:
        """Whether the firmware runs from pflash (OVMF, AAVMF); False for a ROM given with -bios
        (SeaBIOS, QEMU's default). QEMU removes the machine's flash devices when no pflash drive is
        given. The PC machines name the first one system.flash0, arm's virt machine virt.flash0."""
        children = _dicts(await self.run("qom-list", {"path": "/machine"}))
        return any(c.get("name") in FLASH0 for c in children)

    async def boot_devices(self) -> list[BootDevice]:
        found: list[BootDevice] = []
        for parent in ("/machine/peripheral", "/machine/peripheral-anon"):
            for child in _dicts(await self.run("qom-list", {"path": parent})):
                ctype = str(child.get("type", ""))
                if not (ctype.startswith("child<") and ctype.endswith(">")):
                    continue
                path = f"{parent}/{child.get('name')}"
                props = {str(p.get("name")) for p in _dicts(await self.run("qom-list", {"path": path}))}
                if "bootindex" not in props:
                    continue
                index = await self.run("qom-get", {"path": path, "property": "bootindex"})
                kind = classify_device(ctype[6:-1], props)
                mac = None
                if kind == "pxe":
                    mac = str(await self.run("qom-get", {"path": path, "property": "mac"})).lower()
                found.append(BootDevice(path, kind, int(index), mac))
        return found

    async def apply_order(self, devices: list[BootDevice], target: dict[str, int]) -> list[BootDevice]:
        changed = [d for d in devices if target[d.path] != d.index]
        # QEMU refuses a bootindex another device holds, so clear the moving ones first.
        for final in (False, True):
            for d in changed:
                value = target[d.path] if final else -1
                await self.run("qom-set", {"path": d.path, "property": "bootindex", "value": value})
        return [replace(d, index=target[d.path]) for d in devices]


def _bars_mapped(buses: object) -> bool:
    """Whether any device in a query-pci reply has a BAR mapped (QEMU says -1 for an unmapped one)."""
    for bus in _dicts(buses):
        for dev in _dicts(bus.get("devices", [])):
            for region in _dicts(dev.get("regions", [])):
                address = region.get("address")
                if isinstance(address, int) and 0 < address < 2**64 - 1:
                    return True
    return False


async def _negotiate(client: QMPClient, sock: socket.socket, path: Path, timeout: float) -> None:
    try:
        await asyncio.wait_for(client.connect(sock), timeout)
    except ConnectError as e:
        if isinstance(e.exc, EOFError | ConnectionResetError):
            raise VmGone(f"QEMU at {path} hung up") from None
        raise DriverError(f"cannot connect to QMP socket {path}: {e}") from None
    except TimeoutError:
        # A QMP socket serves one client at a time: a second one waits for the greeting.
        raise DriverError(
            f"QMP socket {path} did not greet within {timeout:.0f} s (another QMP client connected?)"
        ) from None


async def _unix_connect(path: Path) -> socket.socket:
    """Connect here rather than in qemu.qmp, which logs every refused connection (every VM that is
    off, at each power sync) as an ERROR."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        await asyncio.get_running_loop().sock_connect(sock, str(path))
    except (FileNotFoundError, ConnectionRefusedError):
        sock.close()
        raise VmGone(f"no QEMU at {path}") from None
    except OSError as e:
        sock.close()
        raise DriverError(f"cannot connect to QMP socket {path}: {e.strerror}") from None
    return sock


def _dicts(value: object) -> list[dict[str, Any]]:
    if not isinstance(value, list):
        raise DriverError(f"unexpected QMP reply {value!r}")
    return [v for v in value if isinstance(v, dict)]


@asynccontextmanager
async def qmp_session(path: Path, timeout: float = QMP_TIMEOUT) -> AsyncIterator[_Session]:
    """Connect to a VM's QMP socket; raise VmGone if no QEMU listens there."""
    client = QMPClient("bootforge")
    sock = await _unix_connect(path)
    try:
        await _negotiate(client, sock, path, timeout)
    except BaseException:
        # A connect cut short (timeout, cancel) leaves its transport and our socket open.
        with suppress(Exception):
            await client.disconnect()
        sock.close()
        raise
    try:
        yield _Session(client, path, timeout)
    finally:
        # After `quit` or a crash the server has hung up; disconnect re-raises that, which is expected.
        with suppress(Exception):
            await client.disconnect()


@dataclass(frozen=True)
class _BootState:
    persistent: str | None = None
    once: str | None = None


def _boot_state(task: Task) -> _BootState:
    raw = task.node.driver_internal_info.get(_BOOT_KEY) or {}
    return _BootState(raw.get("persistent"), raw.get("once"))


def _set_boot_state(task: Task, state: _BootState) -> None:
    # A new dict: JSON columns only notice assignment, not mutation.
    info = dict(task.node.driver_internal_info)
    info[_BOOT_KEY] = {"persistent": state.persistent, "once": state.once}
    task.node.driver_internal_info = info


class _QemuBase:
    name = "qemu"

    def __init__(self, qmp_timeout: float = QMP_TIMEOUT) -> None:
        self.qmp_timeout = qmp_timeout

    def get_properties(self) -> dict[str, str]:
        return dict(PROPERTIES)

    def validate(self, task: Task) -> None:
        parse_driver_info(task.node.driver_info)

    def _info(self, task: Task) -> QemuInfo:
        return parse_driver_info(task.node.driver_info)

    async def _status(self, info: QemuInfo) -> str | None:
        """QMP run state, or None when there is no VM process."""
        if info.pid_file is not None and info.pid_file.exists():
            pid = vm.read_pid(info.pid_file)
            if pid is not None and not vm.pid_alive(pid):
                return None  # a stale socket file may remain after a crash; don't wait on it
        try:
            async with qmp_session(info.qmp_socket, self.qmp_timeout) as s:
                reply = await s.run("query-status")
        except VmGone:
            return None
        if not isinstance(reply, dict) or not isinstance(reply.get("status"), str):
            raise DriverError(f"unexpected query-status reply from {info.qmp_socket}: {reply!r}")
        return str(reply["status"])

    @asynccontextmanager
    async def _session(self, info: QemuInfo, doing: str) -> AsyncIterator[_Session]:
        """A session for a command that needs the VM: a vanished VM is an error here."""
        try:
            async with qmp_session(info.qmp_socket, self.qmp_timeout) as s:
                yield s
        except VmGone as e:
            raise DriverError(f"cannot {doing}: the VM is not running ({e})") from None


class QemuPower(_QemuBase, base.PowerInterface):
    def __init__(self, soft_timeout: float = 60.0, qmp_timeout: float = QMP_TIMEOUT) -> None:
        super().__init__(qmp_timeout)
        self.soft_timeout = soft_timeout

    def get_supported_power_states(self, task: Task) -> list[str]:
        return [base.POWER_ON, base.POWER_OFF, base.REBOOT, base.SOFT_POWER_OFF, base.SOFT_REBOOT]

    async def get_power_state(self, task: Task) -> str:
        return power_state_from_status(await self._status(self._info(task)))

    async def set_power_state(self, task: Task, state: str, timeout: float | None = None) -> None:
        info = self._info(task)
        if state == base.POWER_ON:
            await self._power_on(task, info)
        elif state == base.POWER_OFF:
            await self._hard_off(info)
        elif state == base.SOFT_POWER_OFF:
            await self._soft_off(task, info, timeout)
        elif state == base.REBOOT:
            await self.reboot(task, timeout)
        elif state == base.SOFT_REBOOT:
            await self._soft_off(task, info, timeout)
            await self._power_on(task, info)
        else:
            raise InvalidInput(f"qemu power interface does not support {state!r}", "target")

    async def reboot(self, task: Task, timeout: float | None = None) -> None:
        """A hard reset (like a BMC's "power reset"); a VM that is off is powered on."""
        info = self._info(task)
        status = await self._status(info)
        if status is None:
            await self._power_on(task, info)
            return
        await self._boot(task, info, status)

    async def _power_on(self, task: Task, info: QemuInfo) -> None:
        status = await self._status(info)
        if status in _ON_STATES:
            return
        if status is None:
            await self._start(info)
            status = "prelaunch"
        await self._boot(task, info, status)

    async def _boot(self, task: Task, info: QemuInfo, status: str) -> None:
        async with self._session(info, "power on") as s:
            if not info.owned:
                await _keep_process_on_guest_poweroff(s)
            await _reset_into_next_boot(s, task, status)

    async def _start(self, info: QemuInfo) -> None:
        if not info.owned:
            raise DriverError(
                f"cannot power on: no QEMU process answers on {info.qmp_socket} and driver_info has no "
                "qemu_command to start one"
            )
        await start_process(info, "cannot power on")

    async def _hard_off(self, info: QemuInfo) -> None:
        status = await self._status(info)
        if status is None:
            return
        if info.owned:
            await self._end_process(info)
        elif status in _ON_STATES:
            async with self._session(info, "power off") as s:
                await s.run("stop")

    async def _end_process(self, info: QemuInfo) -> None:
        pid = vm.read_pid(info.pid_file) if info.pid_file else None
        try:
            async with qmp_session(info.qmp_socket, self.qmp_timeout) as s:
                await s.run("quit")
        except (VmGone, DriverError):
            pass  # already gone, or QMP hangs: the pid is ended below either way
        if pid is None:
            if await self._wait_status(info, lambda st: st is None, QUIT_GRACE):
                return
            raise DriverError(
                f"cannot power off: QEMU at {info.qmp_socket} did not exit and its pid is unknown"
            )
        if not await vm.wait_gone(pid, QUIT_GRACE):
            try:
                await vm.kill_pid(pid, QUIT_GRACE / 2)
            except vm.QemuError as e:
                raise DriverError(f"cannot power off: {e}") from None

    async def _soft_off(self, task: Task, info: QemuInfo, timeout: float | None) -> None:
        """ACPI power button, then wait; a guest that ignores it is powered off hard."""
        status = await self._status(info)
        if status in _ON_STATES:
            async with self._session(info, "soft power off") as s:
                if not info.owned:
                    await _keep_process_on_guest_poweroff(s)
                await s.run("system_powerdown")
            limit = timeout or self.soft_timeout
            if not await self._wait_status(info, lambda st: st not in _ON_STATES, limit):
                await task.record(
                    "power",
                    f"guest ignored the ACPI power button for {limit:.0f} s; powering off hard",
                    "warning",
                )
        await self._hard_off(info)

    async def _wait_status(self, info: QemuInfo, done: Callable[[str | None], bool], timeout: float) -> bool:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not done(await self._status(info)):
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(SOFT_POLL)
        return True


async def start_process(info: QemuInfo, doing: str) -> None:
    """Start an owned VM's QEMU process, paused (a `cont` or the power-on reset runs it); the
    DriverError starts with `doing`. Used by power on, and by virtual media to get a CD drive."""
    if info.pid_file is None:
        raise DriverError(f"{doing}: driver_info has no qemu_command, so bootforge may not start the VM")
    try:
        argv = await asyncio.to_thread(_start_argv, info)
        await vm.spawn_daemon(argv + vm.control_args(info.qmp_socket, info.pid_file), START_TIMEOUT)
    except vm.QemuError as e:
        raise DriverError(f"{doing}: {e}") from None


def _start_argv(info: QemuInfo) -> list[str]:
    """The argv that starts an owned VM (reads the definition file, copies firmware vars: blocking)."""
    if info.argv is not None:
        return list(info.argv)
    assert info.definition is not None
    defn = vm.load_definition(info.definition, info.boot_mode)
    firmware = vm.firmware_for(defn)  # SeaBIOS, OVMF or (arm64) AAVMF
    vm.prepare_state_files(defn, firmware)
    accel = vm.detect_accel() if defn.accel == "auto" else defn.accel
    return vm.build_argv(defn, accel, firmware)


async def _keep_process_on_guest_poweroff(s: _Session) -> None:
    # Like -no-shutdown: a guest that powers itself off leaves a process bootforge can power on again.
    # set-action exists since QEMU 6.0; on older versions a guest poweroff ends an external VM for good.
    with suppress(DriverError):
        await s.run("set-action", {"shutdown": "pause"})


async def _reset_into_next_boot(s: _Session, task: Task, status: str) -> None:
    """Apply the node's boot device(s), reset, run the VM (`status`: its run state before), and
    restore the order after a one-time device once the firmware has read it."""
    state = _boot_state(task)
    devices = await s.boot_devices()
    macs = await _pxe_macs(task)
    if state.persistent:
        devices = await s.apply_order(devices, plan_order(devices, state.persistent, macs))
    before = {d.path: d.index for d in devices}
    if state.once:
        devices = await s.apply_order(devices, plan_order(devices, state.once, macs))
    await s.reset()
    if status != "running":
        await s.run("cont")
    if not state.once:
        return
    # Only a one-time order has to outlive SeaBIOS's own resets; a fresh process POSTs once.
    rom_reboots = status != "prelaunch" and not await s.firmware_in_flash()
    if rom_reboots and not await s.wait_pci_mapped(POST_WAIT):
        await task.record(
            "management",
            f"no POST mapped the VM's PCI devices within {POST_WAIT:g} s of the reset: the "
            f"one-time {state.once} device may not have been used",
            "warning",
        )
    await s.apply_order(devices, before)
    _set_boot_state(task, replace(state, once=None))
    await task.record("management", f"booting from {state.once} once; boot order restored for later boots")


async def _pxe_macs(task: Task) -> set[str]:
    """The MACs of the node's PXE-enabled ports: the NICs boot device `pxe` puts first."""
    return {p.address.lower() for p in await task.get_ports() if p.pxe_enabled}


class QemuManagement(_QemuBase, base.ManagementInterface):
    def get_supported_boot_devices(self, task: Task) -> list[str]:
        return list(BOOT_KINDS)

    async def set_boot_device(self, task: Task, device: str, persistent: bool = False) -> None:
        if device not in BOOT_KINDS:
            raise InvalidInput(f"qemu management does not support boot device {device!r}", "boot_device")
        info = self._info(task)
        if await self._status(info) is not None:
            # Check the VM has such a device now rather than fail at the next power on.
            async with self._session(info, "set the boot device") as s:
                devices = await s.boot_devices()
                order = plan_order(devices, device, await _pxe_macs(task))
                if persistent:
                    await s.apply_order(devices, order)
        old = _boot_state(task)
        _set_boot_state(task, _BootState(device, None) if persistent else replace(old, once=device))

    async def get_boot_device(self, task: Task) -> dict[str, Any]:
        state = _boot_state(task)
        if state.once:
            return {"boot_device": state.once, "persistent": False}
        if state.persistent:
            return {"boot_device": state.persistent, "persistent": True}
        info = self._info(task)
        if await self._status(info) is None:
            return {"boot_device": None, "persistent": None}
        async with self._session(info, "read the boot device") as s:
            devices = [d for d in await s.boot_devices() if d.index >= 0]
        first = min(devices, key=lambda d: d.index, default=None)
        return {"boot_device": first.kind if first else None, "persistent": True if first else None}
