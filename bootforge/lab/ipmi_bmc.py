"""An IPMI 2.0 (lanplus) BMC for the lab and the tests: pyghmi's BMC server, glued to a machine.

The protocol side is pyghmi's `pyghmi.ipmi.bmc.Bmc` (the server virtualbmc is built on); this module
only maps its handlers onto a machine:

* ``qemu``: a QEMU VM over QMP, through the `qemu` driver (`bootforge.drivers.qemu`): power on / off
  (ends and restarts the process when ``--qemu-command`` is given, else pauses it) / reset / cycle /
  soft (ACPI power button) / diag (NMI), and boot devices network / disk / cdrom, once or persistent.
  Unlike virtualbmc, a boot device set over IPMI applies at ``power reset`` too: the qemu driver
  rewrites the firmware boot order before each reset it does.
* ``memory``: a machine that exists only in this process (tests and benchmarks without QEMU). It
  remembers power state and boot flags, consumes a one-time boot device at each boot, writes a line
  per boot to its serial console and echoes what is typed into it.

How it answers, and why:

* Chassis control is answered at once and carried out afterwards by one worker per machine, in
  order, as a real BMC does. pyghmi's server handles every BMC of the process on one thread, and a
  client retransmits a request that is not answered within about a second, so a reply held back
  until a VM has started would make ipmitool send (and the BMC carry out) the same reset twice.
  A client that wants to see the new state polls `chassis power status`, as Ironic does.
* Boot flags (Get/Set System Boot Options, parameter 5) are answered by this module, not by pyghmi,
  whose server always reports "once, legacy" and ignores the persistent and EFI bits. The EFI bit is
  remembered and read back; it does not change the VM's firmware (a VM definition fixes it).
* Serial over LAN: pyghmi's server console (payload activation) is used as it is. What the BMC
  sends is the machine's serial output: for ``qemu`` the new bytes appended to ``--serial-log`` (the
  VM's serial log file), for ``memory`` its generated console.

Limits of pyghmi's server, as found: it always negotiates cipher suite 3 whatever the client asks
(ipmitool copes; pyghmi's own client needs bootforge's fallback, see drivers/ipmi.py); it never
expires sessions; it has no user list, SEL, SDR, LAN configuration or `power cycle` of its own
(``cycle`` here is off then on); every BMC of a process shares one thread, so a slow QMP answer
delays the other BMCs of the same process (the lab runs one process per VM; ``--count`` is for
memory machines, whose answers take microseconds). Fixed here rather than lived with: with several
BMCs in one process a client's new login made pyghmi forget that client's sessions on every port
(`_ServerSession`); its SOL packets of 256 characters cannot be acked by pyghmi's client
(`activate_payload`); and pyghmi's lost wake-ups and blocking-mode race, shared with its client, are
fixed by the ipmi driver's `install_pyghmi_fixes`. With them, one process serves 200 BMCs: rounds
of 200 concurrent power reads (16 client workers) end in about 0.2 s.

Run: ``python -m bootforge.lab.ipmi_bmc --address 127.0.0.1 --port 6230 --username admin --password
secret --qmp-socket /run/vm1.qmp [--qemu-command vm1.json] [--serial-log vm1-serial.log]`` or
``--machine memory [--count N]``. Port 0 picks free ports. Once listening it prints one line to stdout,
``ready <port> [<port> ...]``, and serves until SIGTERM or SIGINT.
"""

from __future__ import annotations

import abc
import argparse
import asyncio
import faulthandler
import logging
import queue
import signal
import sys
import threading
from collections.abc import Callable, Coroutine, Sequence
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pyghmi.ipmi.bmc as pyghmi_bmc
import pyghmi.ipmi.private.serversession as pyghmi_serversession
import pyghmi.ipmi.private.session as pyghmi_session

from bootforge.drivers import base, ipmi, qemu
from bootforge.drivers.base import Task, updated_internal
from bootforge.errors import BootforgeError

__all__ = ["BootFlags", "Machine", "MemoryMachine", "QemuMachine", "VirtualBmc", "main", "serve"]

log = logging.getLogger("bootforge.lab.ipmi_bmc")

# IPMI boot device selector (Set System Boot Options, parameter 5, data 2 bits 5:2) <-> machine kind.
_DEVICE_CODES = {"pxe": 0b0001, "disk": 0b0010, "safe": 0b0011, "cdrom": 0b0101, "bios": 0b0110}
_CODE_DEVICES = {v: k for k, v in _DEVICE_CODES.items()}
_CC_OK = 0x00
_CC_INVALID_DATA = 0xCC
_CC_PARAM_NOT_SUPPORTED = 0x80
_CC_UNSPECIFIED = 0xFF
# How long a status or boot-flags read waits for a machine busy with an earlier action before it
# answers from what it last knew: shorter than a client's retransmit interval.
READ_WAIT = 0.8
ACTIONS = ("on", "off", "reset", "cycle", "soft", "diag")


@dataclass(frozen=True)
class BootFlags:
    """The boot override a BMC holds: device None means "no override" (boot flags not valid)."""

    device: str | None = None
    persistent: bool = False
    uefi: bool = False


class Machine(abc.ABC):
    """What a BMC acts on. Methods are called from the BMC's thread and must not block for long:
    `act` queues the action; reads may wait up to READ_WAIT for actions in progress."""

    @abc.abstractmethod
    def is_on(self) -> bool: ...

    @abc.abstractmethod
    def act(self, action: str) -> None:
        """Queue one of ACTIONS; it is carried out after the reply, in order."""

    @abc.abstractmethod
    def boot_flags(self) -> BootFlags: ...

    @abc.abstractmethod
    def set_boot_flags(self, flags: BootFlags) -> None:
        """Raise ValueError if the machine cannot boot that device."""

    @abc.abstractmethod
    def read_console(self) -> bytes:
        """Serial output since the last call (b"" if none)."""

    def write_console(self, data: bytes) -> None:
        """What an SOL client typed; machines without serial input drop it."""
        return None

    def close(self) -> None:
        """Stop workers; the machine itself is left as it is."""
        return None


class MemoryMachine(Machine):
    """A machine that exists only in memory: power, boot flags, a console; optional slowness.

    `power_delay` seconds pass between an action and its effect (a slow BMC or a slow power
    supply); `ignore_acpi` makes a soft power off do nothing, like an OS that ignores the power
    button.
    """

    def __init__(self, name: str, power_delay: float = 0.0, ignore_acpi: bool = False) -> None:
        self.name = name
        self.power_delay = power_delay
        self.ignore_acpi = ignore_acpi
        self._lock = threading.Lock()
        self._on = False
        self._flags = BootFlags()
        self._console = bytearray()
        self._actions: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._worker = threading.Thread(target=self._work, name=f"machine-{name}", daemon=True)
        self._worker.start()

    def is_on(self) -> bool:
        with self._lock:
            return self._on

    def act(self, action: str) -> None:
        self._actions.put(action)

    def boot_flags(self) -> BootFlags:
        with self._lock:
            return self._flags

    def set_boot_flags(self, flags: BootFlags) -> None:
        with self._lock:
            self._flags = flags

    def read_console(self) -> bytes:
        with self._lock:
            out = bytes(self._console)
            self._console.clear()
        return out

    def write_console(self, data: bytes) -> None:
        with self._lock:
            self._console += data  # a terminal's echo

    def close(self) -> None:
        self._stop.set()
        self._actions.put(None)

    def _work(self) -> None:
        while (action := self._actions.get()) is not None:
            if self._stop.wait(self.power_delay):
                return
            with self._lock:
                self._apply(action)

    def _apply(self, action: str) -> None:
        if action == "on" and not self._on:
            self._boot()
        elif action == "off":
            self._on = False
        elif action == "soft" and self._on and not self.ignore_acpi:
            self._say("ACPI power button: shutting down")
            self._on = False
        elif action in ("reset", "cycle"):
            # A reset of a machine that is off does nothing on real hardware; a cycle powers it on.
            if self._on or action == "cycle":
                self._boot()
        elif action == "diag" and self._on:
            self._say("NMI received")

    def _boot(self) -> None:
        self._on = True
        flags = self._flags
        device = flags.device or "default"
        mode = "uefi" if flags.uefi else "bios"
        self._say(f"power on, booting from {device} ({mode})")
        if flags.device is not None and not flags.persistent:
            self._flags = BootFlags()  # a one-time device is used up by the boot it applied to

    def _say(self, text: str) -> None:
        self._console += f"[{self.name}] {text}\r\n".encode()


class _BmcNode:
    """The part of a node the qemu driver reads: its driver_info and its boot state."""

    def __init__(self, driver_info: dict[str, Any]) -> None:
        self.driver_info = driver_info
        self.driver_internal_info: dict[str, Any] = {}


class _BmcTask:
    """What the qemu driver uses of a Task, for a VM behind an emulated BMC: no database, events
    go to the log. (Cast to Task: the lab must not import the database models the Protocol names.)"""

    def __init__(self, driver_info: dict[str, Any]) -> None:
        self.node = _BmcNode(driver_info)

    def set_internal(self, **values: Any) -> None:
        self.node.driver_internal_info = updated_internal(self.node.driver_internal_info, values)

    async def get_ports(self) -> list[Any]:
        # A BMC does not know which NIC bootforge enrolled as the PXE port: boot device pxe keeps
        # the VM's own NIC order, as a real BMC's firmware does.
        return []

    async def record(self, event_type: str, message: str, severity: str = "info") -> None:
        log.info("%s: %s", event_type, message)

    async def save(self) -> None:
        return None


class QemuMachine(Machine):
    """A QEMU VM over QMP, through the qemu driver's power and management interfaces.

    One asyncio loop thread runs every QMP exchange, one at a time (a QMP socket serves one client),
    so queued actions and reads never interleave on the socket.
    """

    def __init__(
        self,
        qmp_socket: Path,
        qemu_command: str | None = None,
        serial_log: Path | None = None,
        soft_timeout: float = 60.0,
    ) -> None:
        info: dict[str, Any] = {"qemu_qmp_socket": str(qmp_socket)}
        if qemu_command:
            info["qemu_command"] = qemu_command
        qemu.parse_driver_info(info)  # a bad argument fails at start-up, not at the first request
        self._task = cast(Task, _BmcTask(info))
        self._power = qemu.QemuPower(soft_timeout=soft_timeout)
        self._mgmt = qemu.QemuManagement()
        self._uefi = False
        self._last_on = False
        self._serial_log = serial_log
        # Serial output already in the log when the BMC started is history, not console output.
        self._serial_pos = serial_log.stat().st_size if serial_log and serial_log.exists() else 0
        self._loop = asyncio.new_event_loop()
        self._lock = asyncio.Lock()
        self._thread = threading.Thread(target=self._loop.run_forever, name="qmp", daemon=True)
        self._thread.start()

    def _submit(self, coro: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    async def _locked(self, fn: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
        async with self._lock:
            return await fn()

    def is_on(self) -> bool:
        fut = self._submit(self._locked(lambda: self._power.get_power_state(self._task)))
        try:
            self._last_on = fut.result(READ_WAIT) == "power on"
        except TimeoutError:
            pass  # busy with an action: answer with the last known state; the read goes on
        except Exception as e:
            log.warning("power status of %s: %s", self._task.node.driver_info["qemu_qmp_socket"], e)
        return self._last_on

    def act(self, action: str) -> None:
        fut = self._submit(self._locked(lambda: self._act(action)))
        fut.add_done_callback(lambda f: self._report(action, f))

    async def _act(self, action: str) -> None:
        task = self._task
        if action == "on":
            await self._power.set_power_state(task, base.POWER_ON)
        elif action == "off":
            await self._power.set_power_state(task, base.POWER_OFF)
        elif action == "reset":
            if await self._power.get_power_state(task) == base.POWER_ON:
                await self._power.reboot(task)
        elif action == "cycle":
            await self._power.set_power_state(task, base.POWER_OFF)
            await self._power.set_power_state(task, base.POWER_ON)
        elif action == "soft":
            # Press the ACPI power button and return, as a BMC does; the guest decides.
            info = qemu.parse_driver_info(task.node.driver_info)
            async with qemu.qmp_session(info.qmp_socket) as s:
                await s.run("system_powerdown")
        elif action == "diag":
            info = qemu.parse_driver_info(task.node.driver_info)
            async with qemu.qmp_session(info.qmp_socket) as s:
                await s.run("inject-nmi")

    @staticmethod
    def _report(action: str, fut: Any) -> None:
        with suppress(Exception):
            if (exc := fut.exception()) is not None:
                log.error("chassis %s failed: %s", action, getattr(exc, "message", exc))

    def boot_flags(self) -> BootFlags:
        fut = self._submit(self._locked(lambda: self._mgmt.get_boot_device(self._task)))
        try:
            got = fut.result(READ_WAIT)
        except Exception as e:
            log.warning("boot device read: %s", e)
            return BootFlags()
        # Only an override this BMC set counts: the VM's own boot order is "no override".
        state = self._task.node.driver_internal_info.get("qemu_boot") or {}
        if not (state.get("once") or state.get("persistent")):
            return BootFlags(uefi=self._uefi)
        return BootFlags(got["boot_device"], bool(got["persistent"]), self._uefi)

    def set_boot_flags(self, flags: BootFlags) -> None:
        if flags.device is not None and flags.device not in qemu.BOOT_KINDS:
            raise ValueError(f"a VM cannot boot from {flags.device}")
        self._uefi = flags.uefi
        if flags.device is None:
            self._task.set_internal(qemu_boot=None)
            return
        device = flags.device
        fut = self._submit(
            self._locked(lambda: self._mgmt.set_boot_device(self._task, device, flags.persistent))
        )
        fut.add_done_callback(lambda f: self._report(f"bootdev {device}", f))

    def read_console(self) -> bytes:
        if self._serial_log is None:
            return b""
        try:
            with self._serial_log.open("rb") as f:
                size = f.seek(0, 2)
                if size < self._serial_pos:
                    self._serial_pos = 0  # the log was truncated or replaced
                f.seek(self._serial_pos)
                data = f.read(4096)
        except OSError:
            return b""
        self._serial_pos += len(data)
        return data

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


class _ServerSession(pyghmi_serversession.ServerSession):  # type: ignore[misc]
    """pyghmi's server-side session, fixed for many BMCs (ports) in one process.

    A client socket that already has a session here and sends a new sessionless request (the
    first packet of a login, which pyghmi's client sends from a socket it shares between up to 64
    BMCs) makes pyghmi forget every session of that client address on *every* port of the process,
    then route the next packets of those sessions as sessionless ones, where they fail (and
    `process_pktqueue` raises AttributeError: a ServerSession has no sessionless_data). Here only
    this BMC's session of that address is forgotten, and stray sessionless packets go to the BMC.
    """

    def _handle_ipmi_packet(self, data: Any, sockaddr: Any = None, qent: Any = None) -> Any:
        if qent is not None and len(data) > 13 and data[4] in (0, 2) and bytes(data[5:13]) == bytes(8):
            ports = pyghmi_session.Session.bmc_handlers.get(sockaddr, {})
            if ports.get(self.bmc.port) is self:
                del ports[self.bmc.port]
                if not ports:
                    del pyghmi_session.Session.bmc_handlers[sockaddr]
            self.bmc.pktqueue.append(qent)
            self.bmc.process_pktqueue()
            return None
        return super()._handle_ipmi_packet(data, sockaddr, qent)

    def sessionless_data(self, data: Any, sockaddr: Any) -> None:
        self.bmc.sessionless_data(data, sockaddr)


class VirtualBmc(pyghmi_bmc.Bmc):  # type: ignore[misc]
    """One IPMI endpoint (address, port, one user) in front of one Machine."""

    def __init__(self, machine: Machine, username: str, password: str, address: str, port: int) -> None:
        # The server creates its sessions through this module attribute (emulator process only).
        pyghmi_serversession.ServerSession = _ServerSession
        # pyghmi's server waits like its client does, and loses wake-ups the same way.
        ipmi.install_pyghmi_fixes()
        super().__init__({username: password}, port=port, address=address)
        # pyghmi keys server sessions by self.port and matches it against the socket's port, so a
        # port picked by the kernel (0) must be written back.
        self.port = self.serversocket.getsockname()[1]
        self.machine = machine
        self.iohandler = self._console_input

    # -- power (Chassis Control / Get Chassis Status) --

    def get_power_state(self) -> str:
        return "on" if self.machine.is_on() else "off"

    def power_on(self) -> int:
        return self._act("on")

    def power_off(self) -> int:
        return self._act("off")

    def power_reset(self) -> int:
        return self._act("reset")

    def power_cycle(self) -> int:
        return self._act("cycle")

    def power_shutdown(self) -> int:
        return self._act("soft")

    def pulse_diag(self) -> int:
        return self._act("diag")

    def _act(self, action: str) -> int:
        log.info("port %d: chassis %s", self.port, action)
        self.machine.act(action)
        return _CC_OK

    # -- boot flags (System Boot Options parameter 5) --

    def get_system_boot_options(self, request: dict[str, Any], session: Any) -> None:
        if request["data"][0] & 0x7F != 5:
            session.send_ipmi_response(code=_CC_PARAM_NOT_SUPPORTED)
            return
        flags = self.machine.boot_flags()
        if flags.device is None:
            session.send_ipmi_response(data=[1, 5, 0x20 if flags.uefi else 0, 0, 0, 0, 0])
            return
        data1 = 0x80 | (0x40 if flags.persistent else 0) | (0x20 if flags.uefi else 0)
        session.send_ipmi_response(data=[1, 5, data1, _DEVICE_CODES[flags.device] << 2, 0, 0, 0])

    def set_system_boot_options(self, request: dict[str, Any], session: Any) -> None:
        data = request["data"]
        param = data[0] & 0x7F
        if param in (0, 3, 4):
            session.send_ipmi_response()  # set-in-progress, timer and ack flags: accepted, no effect
            return
        if param != 5 or len(data) < 3:
            session.send_ipmi_response(code=_CC_PARAM_NOT_SUPPORTED if param != 5 else _CC_INVALID_DATA)
            return
        valid, persistent, uefi = bool(data[1] & 0x80), bool(data[1] & 0x40), bool(data[1] & 0x20)
        code = (data[2] >> 2) & 0b1111
        if not valid or code == 0:
            flags = BootFlags(uefi=uefi)
        elif code in _CODE_DEVICES:
            flags = BootFlags(_CODE_DEVICES[code], persistent, uefi)
        else:
            session.send_ipmi_response(code=_CC_INVALID_DATA)
            return
        try:
            self.machine.set_boot_flags(flags)
        except ValueError as e:
            log.warning("port %d: boot device refused: %s", self.port, e)
            session.send_ipmi_response(code=_CC_INVALID_DATA)
            return
        log.info("port %d: boot flags %s", self.port, flags)
        session.send_ipmi_response()

    # -- Serial over LAN --

    def is_active(self) -> bool:
        return True  # the console stays open across power states, as on a real BMC

    def activate_payload(self, request: dict[str, Any], session: Any) -> None:
        super().activate_payload(request, session)
        if self.sol is not None:
            # pyghmi's server console sends up to 256 characters per packet, but the client acks
            # with a one-byte "accepted character count": pyghmi's client fails on a 256-byte
            # packet (ValueError building the ack) and the console stalls. 255 fits.
            self.sol.maxoutcount = 255

    def _console_input(self, data: Any) -> None:
        if isinstance(data, bytes | bytearray):
            self.machine.write_console(bytes(data))

    def pump_console(self) -> None:
        """Send the machine's new serial output to the SOL client, if one is attached."""
        data = self.machine.read_console()
        if data and self.activated and self.sol is not None:
            self.sol.send_data(data)

    def close(self) -> None:
        self.machine.close()
        with suppress(OSError):
            self.serversocket.close()


def serve(bmcs: Sequence[VirtualBmc], stop: threading.Event, poll: float = 0.05) -> None:
    """Run pyghmi's server loop for `bmcs` (all of them: pyghmi has one loop per process) until stop."""
    while not stop.is_set():
        try:
            pyghmi_session.Session.wait_for_rsp(timeout=poll)
        except Exception:  # one bad packet must not end every BMC of the process
            log.exception("pyghmi failed handling a packet")
        for bmc in bmcs:
            try:
                bmc.pump_console()
            except Exception as e:  # a lost SOL client must not end the BMC
                log.warning("port %d: SOL: %s", bmc.port, e)


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bootforge.lab.ipmi_bmc", description=__doc__.split("\n")[0])
    p.add_argument("--address", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=623, help="UDP port; 0 picks a free one (default 623)")
    p.add_argument("--username", required=True)
    p.add_argument("--password", required=True)
    p.add_argument("--machine", choices=("qemu", "memory"), default="qemu")
    p.add_argument("--qmp-socket", type=Path, help="the VM's QMP socket (machine qemu)")
    p.add_argument("--qemu-command", help="VM definition file or JSON argv: power off ends the VM")
    p.add_argument("--serial-log", type=Path, help="the VM's serial log, sent over SOL (machine qemu)")
    p.add_argument("--soft-timeout", type=float, default=60.0)
    p.add_argument("--count", type=int, default=1, help="memory machines on consecutive ports (default 1)")
    p.add_argument("--power-delay", type=float, default=0.0, help="memory: seconds before an action acts")
    p.add_argument("--ignore-acpi", action="store_true", help="memory: soft power off does nothing")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    if args.machine == "qemu" and args.qmp_socket is None:
        p.error("--machine qemu needs --qmp-socket")
    if args.count < 1 or (args.count > 1 and (args.machine != "memory" or args.port == 0)):
        p.error("--count > 1 needs --machine memory and a fixed first --port")
    if args.machine == "memory" and (args.qmp_socket or args.qemu_command or args.serial_log):
        p.error("--qmp-socket, --qemu-command and --serial-log are for --machine qemu")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s ipmi_bmc %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    bmcs: list[VirtualBmc] = []
    try:
        for i in range(args.count):
            port = args.port + i if args.port else 0
            machine: Machine
            if args.machine == "memory":
                machine = MemoryMachine(f"m{port or i}", args.power_delay, args.ignore_acpi)
            else:
                machine = QemuMachine(args.qmp_socket, args.qemu_command, args.serial_log, args.soft_timeout)
            bmcs.append(VirtualBmc(machine, args.username, args.password, args.address, port))
    except (OSError, ValueError, BootforgeError) as e:
        print(f"ipmi_bmc: cannot start: {getattr(e, 'message', e)}", file=sys.stderr)
        for b in bmcs:
            b.close()
        return 1
    stop = threading.Event()
    faulthandler.register(signal.SIGUSR1)  # `kill -USR1 PID` prints every thread's stack to stderr
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    print("ready " + " ".join(str(b.port) for b in bmcs), flush=True)
    try:
        serve(bmcs, stop)
    finally:
        for b in bmcs:
            b.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
