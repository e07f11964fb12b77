"""The ipmi driver and the emulated BMC (bootforge.lab.ipmi_bmc) on 127.0.0.1, cross-checked with ipmitool.

Every power and boot-device operation is done by one client and read back by the other: ipmitool
(lanplus, written by others) against bootforge's pyghmi driver, both talking to pyghmi's BMC server
behind the emulator's in-memory machine. Failure paths: wrong password, a closed port, a BMC that never
answers (a UDP socket that swallows packets) next to a healthy one, a cipher suite the BMC lacks.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from support.processes import start_ipmi_bmc, stop_process

from bootforge.config import Settings
from bootforge.drivers import base, ipmi
from bootforge.drivers.hardware import Drivers
from bootforge.errors import DriverError

USER, PASSWORD = "admin", "s3cret-pw"


@dataclass
class Node:
    driver_info: dict[str, Any]
    uuid: str = "6a7f0000-0000-4000-8000-000000000001"
    driver_internal_info: dict[str, Any] = field(default_factory=dict)
    properties: dict[str, Any] = field(default_factory=dict)
    boot_mode: str | None = None


@dataclass
class Task:
    node: Node
    settings: Settings
    events: list[tuple[str, str, str]] = field(default_factory=list)

    def set_internal(self, **values: Any) -> None:
        info = dict(self.node.driver_internal_info)
        info.update({k: v for k, v in values.items() if v is not None})
        self.node.driver_internal_info = info

    async def record(self, event_type: str, message: str, severity: str = "info") -> None:
        self.events.append((event_type, message, severity))


@dataclass
class Bmc:
    port: int
    proc: subprocess.Popen[str]

    def info(self, **over: Any) -> dict[str, Any]:
        return {
            "ipmi_address": "127.0.0.1",
            "ipmi_port": self.port,
            "ipmi_username": USER,
            "ipmi_password": PASSWORD,
            **over,
        }


def start_bmc(*extra: str) -> tuple[subprocess.Popen[str], list[int]]:
    return start_ipmi_bmc(USER, PASSWORD, "--machine", "memory", *extra)


@pytest.fixture
def bmc() -> Iterator[Bmc]:
    proc, ports = start_bmc("--port", "0")
    yield Bmc(ports[0], proc)
    stop_process(proc)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        state_dir=tmp_path,
        enabled_hardware_types=["ipmi"],
        power_state_change_timeout=10,
        ipmi={"power_poll_interval": 0.05, "timeout": 10},
    )


@pytest.fixture
def ipmitool() -> str:
    path = shutil.which("ipmitool")
    if path is None:
        pytest.skip("needs ipmitool (Debian package ipmitool)")
    return path


async def tool(port: int, *args: str, password: str = PASSWORD) -> str:
    """Run ipmitool lanplus against the emulated BMC; its stdout, or AssertionError with stderr."""
    argv = ["ipmitool", "-I", "lanplus", "-H", "127.0.0.1", "-p", str(port), "-U", USER, "-P", password]
    proc = await asyncio.create_subprocess_exec(
        *argv, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, f"ipmitool {' '.join(args)}: {err.decode()}"
    return out.decode()


async def tool_power(port: int) -> str:
    out = await tool(port, "power", "status")
    return base.POWER_ON if out.strip().endswith("on") else base.POWER_OFF


async def tool_bootflags(port: int) -> tuple[str | None, bool, bool]:
    """(device, persistent, uefi) as ipmitool decodes boot parameter 5."""
    out = await tool(port, "chassis", "bootparam", "get", "5")
    if "Boot Flag Valid" not in out:
        return None, False, False
    selector = re.search(r"Boot Device Selector : (.+)", out)
    assert selector is not None, out
    names = {"Force PXE": "pxe", "Force Boot from default Hard-Drive": "disk",
             "Force Boot from CD/DVD": "cdrom", "Force Boot into BIOS Setup": "bios"}  # fmt: skip
    device = next((v for k, v in names.items() if selector.group(1).startswith(k)), selector.group(1))
    return device, "all future boots" in out, "BIOS EFI boot" in out


async def wait_for(predicate: Any, timeout: float = 10.0, what: Any = None) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        assert time.monotonic() < deadline, f"condition not met in time: {what() if what else ''}"
        await asyncio.sleep(0.05)


@pytest.fixture
def drivers(settings: Settings) -> Drivers:
    return Drivers(settings)


def task_for(settings: Settings, info: dict[str, Any], **node: Any) -> Task:
    return Task(Node(info, **node), settings)


async def test_power_both_ways(bmc: Bmc, drivers: Drivers, settings: Settings, ipmitool: str) -> None:
    ds = drivers.for_node("ipmi", {})
    assert (ds.power.name, ds.management.name, ds.interfaces["console"].name) == (
        "ipmitool",
        "ipmitool",
        "ipmitool-sol",
    )
    task = task_for(settings, bmc.info())
    power = ds.power
    assert await power.get_power_state(task) == base.POWER_OFF

    await tool(bmc.port, "power", "on")
    await wait_for(lambda: _is(power.get_power_state(task), base.POWER_ON))

    await power.set_power_state(task, base.POWER_OFF)
    assert await tool_power(bmc.port) == base.POWER_OFF
    await power.set_power_state(task, base.POWER_ON)
    assert await tool_power(bmc.port) == base.POWER_ON
    await power.set_power_state(task, base.REBOOT)
    assert await tool_power(bmc.port) == base.POWER_ON
    await power.set_power_state(task, base.SOFT_POWER_OFF)
    assert await tool_power(bmc.port) == base.POWER_OFF
    await power.set_power_state(task, base.SOFT_REBOOT)
    assert await tool_power(bmc.port) == base.POWER_ON
    assert not [e for e in task.events if e[2] == "warning"]

    await tool(bmc.port, "power", "soft")
    await wait_for(lambda: _is(power.get_power_state(task), base.POWER_OFF))
    await tool(bmc.port, "power", "cycle")
    await wait_for(lambda: _is(power.get_power_state(task), base.POWER_ON))
    await tool(bmc.port, "power", "off")
    await wait_for(lambda: _is(power.get_power_state(task), base.POWER_OFF))


async def _is(coro: Any, want: Any) -> bool:
    return bool(await coro == want)


@pytest.mark.parametrize("persistent", [False, True])
@pytest.mark.parametrize("mode", ["bios", "uefi"])
async def test_boot_device_set_by_driver_read_by_ipmitool(
    bmc: Bmc, drivers: Drivers, settings: Settings, ipmitool: str, persistent: bool, mode: str
) -> None:
    mgmt = drivers.for_node("ipmi", {}).management
    task = task_for(settings, bmc.info(), boot_mode=mode)
    for device in ("pxe", "disk", "cdrom", "bios"):
        await mgmt.set_boot_device(task, device, persistent)
        assert await tool_bootflags(bmc.port) == (device, persistent, mode == "uefi")
        assert await mgmt.get_boot_device(task) == {"boot_device": device, "persistent": persistent}
        assert await mgmt.get_boot_mode(task) == mode


async def test_boot_device_set_by_ipmitool_read_by_driver(
    bmc: Bmc, drivers: Drivers, settings: Settings, ipmitool: str
) -> None:
    mgmt = drivers.for_node("ipmi", {}).management
    task = task_for(settings, bmc.info())
    assert await mgmt.get_boot_device(task) == {"boot_device": None, "persistent": None}
    for dev, want in (("pxe", "pxe"), ("disk", "disk"), ("cdrom", "cdrom"), ("bios", "bios")):
        await tool(bmc.port, "chassis", "bootdev", dev)
        assert await mgmt.get_boot_device(task) == {"boot_device": want, "persistent": False}
        await tool(bmc.port, "chassis", "bootdev", dev, "options=persistent,efiboot")
        assert await mgmt.get_boot_device(task) == {"boot_device": want, "persistent": True}
        assert await mgmt.get_boot_mode(task) == "uefi"


async def test_one_time_boot_device_is_used_by_the_next_boot(
    bmc: Bmc, drivers: Drivers, settings: Settings
) -> None:
    ds = drivers.for_node("ipmi", {})
    task = task_for(settings, bmc.info(), properties={"capabilities": "boot_mode:bios"})
    await ds.management.set_boot_device(task, "pxe", persistent=False)
    await ds.power.set_power_state(task, base.POWER_ON)
    assert await ds.management.get_boot_device(task) == {"boot_device": None, "persistent": None}
    await ds.management.set_boot_device(task, "disk", persistent=True)
    await ds.power.reboot(task)
    assert await ds.management.get_boot_device(task) == {"boot_device": "disk", "persistent": True}
    # set_boot_mode rewrites the pending override with the new EFI bit
    await ds.management.set_boot_mode(task, "uefi")
    assert await ds.management.get_boot_mode(task) == "uefi"


async def test_bmc_report(bmc: Bmc, drivers: Drivers, settings: Settings) -> None:
    mgmt = drivers.for_node("ipmi", {}).management
    report = await mgmt.bmc_report(task_for(settings, bmc.info()))
    assert report.reachable, report.detail
    # pyghmi's server always negotiates suite 3: the 17 -> 3 fallback is what made this work.
    assert report.detail == f"IPMI 2.0 at 127.0.0.1:{bmc.port}, cipher suite 3"
    assert report.extra["cipher_suites_refused"] == ["cipher suite 17: the BMC chose cipher suite 3 instead"]
    assert report.power_state == base.POWER_OFF
    assert report.firmware == "1.00"
    assert report.boot_modes == ["bios", "uefi"]


async def test_explicit_cipher_suite(bmc: Bmc, drivers: Drivers, settings: Settings) -> None:
    power = drivers.for_node("ipmi", {}).power
    assert await power.get_power_state(task_for(settings, bmc.info(ipmi_cipher_suite=3))) == base.POWER_OFF
    # A second BMC process: the first one's session is cached under the same address and port.
    proc, ports = start_bmc("--port", "0")
    try:
        task = task_for(settings, {**bmc.info(ipmi_cipher_suite="17"), "ipmi_port": ports[0]})
        with pytest.raises(DriverError) as e:
            await power.get_power_state(task)
        assert f"127.0.0.1:{ports[0]}" in e.value.message
        assert "cipher suite 17: the BMC chose cipher suite 3 instead" in e.value.message
    finally:
        stop_process(proc)


async def test_wrong_password_is_a_named_error(bmc: Bmc, drivers: Drivers, settings: Settings) -> None:
    power = drivers.for_node("ipmi", {}).power
    task = task_for(settings, bmc.info(ipmi_password="not-the-password"))
    started = time.monotonic()
    with pytest.raises(DriverError) as e:
        await power.get_power_state(task)
    # Refused at the login, not timed out (the driver's timeout is 10 s; generous for a loaded host).
    assert time.monotonic() - started < 8
    assert f"IPMI power status at 127.0.0.1:{bmc.port} failed" in e.value.message
    assert "Incorrect password" in e.value.message
    assert "not-the-password" not in e.value.message
    # The right password works at once afterwards: the failed login left nothing behind.
    assert await power.get_power_state(task_for(settings, bmc.info())) == base.POWER_OFF


async def test_closed_port_fails_at_once(drivers: Drivers, settings: Settings) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    power = drivers.for_node("ipmi", {}).power
    task = task_for(settings, {"ipmi_address": "127.0.0.1", "ipmi_port": port, "ipmi_password": PASSWORD})
    started = time.monotonic()
    with pytest.raises(DriverError) as e:
        await power.get_power_state(task)
    assert time.monotonic() - started < 2.5  # before the 3 s probe would give up
    # Nothing listens: the kernel's ICMP port unreachable ends the probe at once.
    assert e.value.message == f"IPMI power status at 127.0.0.1:{port} failed: Connection refused"


@pytest.fixture
def black_hole() -> Iterator[int]:
    """A UDP port on 127.0.0.1 that receives everything and answers nothing."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        yield s.getsockname()[1]


async def test_silent_bmc_holds_up_only_its_own_node(bmc: Bmc, black_hole: int, tmp_path: Path) -> None:
    # An outer timeout shorter than pyghmi's own (about 5 s) so that the outer one is what fires.
    settings = Settings(
        state_dir=tmp_path, enabled_hardware_types=["ipmi"], ipmi={"timeout": 2, "workers": 4}
    )
    power = Drivers(settings).for_node("ipmi", {}).power
    silent = task_for(settings, {"ipmi_address": "127.0.0.1", "ipmi_port": black_hole, "ipmi_password": "x"})
    healthy = task_for(settings, bmc.info())
    assert await power.get_power_state(healthy) == base.POWER_OFF

    stuck = asyncio.create_task(power.get_power_state(silent))
    started = time.monotonic()
    latencies = []
    while not stuck.done():
        t0 = time.monotonic()
        assert await power.get_power_state(healthy) == base.POWER_OFF
        latencies.append(time.monotonic() - t0)
    with pytest.raises(DriverError) as e:
        await stuck
    waited = time.monotonic() - started
    assert 1.9 < waited < 3, waited
    assert e.value.message == f"IPMI power status at 127.0.0.1:{black_hole}: no answer within 2 s"
    assert len(latencies) > 20 and max(latencies) < 0.5, (len(latencies), max(latencies))

    # pyghmi still retries in its thread; the next call to the silent BMC waits for it, then fails
    # on its own, and the healthy one is still fine.
    with pytest.raises(DriverError):
        await power.get_power_state(silent)
    assert await power.get_power_state(healthy) == base.POWER_OFF
    await _drain(power, silent)


async def _drain(power: Any, task: Task) -> None:
    """Wait until pyghmi's thread for the task's BMC has returned (its lock is free)."""
    info = ipmi.parse_driver_info(task.node.driver_info)
    lock = power.client._lock(info.key)
    await asyncio.wait_for(lock.acquire(), 15)
    lock.release()


async def test_soft_power_off_ignored_ends_in_hard_off(drivers: Drivers, settings: Settings) -> None:
    proc, ports = start_bmc("--port", "0", "--ignore-acpi")
    try:
        task = task_for(settings, {"ipmi_address": "127.0.0.1", "ipmi_port": ports[0],
                                   "ipmi_username": USER, "ipmi_password": PASSWORD})  # fmt: skip
        power = drivers.for_node("ipmi", {}).power
        await power.set_power_state(task, base.POWER_ON)
        started = time.monotonic()
        await power.set_power_state(task, base.SOFT_POWER_OFF, timeout=1)
        assert time.monotonic() - started < 8  # the 1 s soft-off timeout, then the hard off
        assert await power.get_power_state(task) == base.POWER_OFF
        assert task.events == [
            ("power", "the machine ignored the ACPI soft power off for 1 s; powering off hard", "warning")
        ]
    finally:
        stop_process(proc)


async def test_slow_power_change_times_out_with_a_named_error(drivers: Drivers, tmp_path: Path) -> None:
    settings = Settings(
        state_dir=tmp_path, enabled_hardware_types=["ipmi"], ipmi={"power_poll_interval": 0.1}
    )
    proc, ports = start_bmc("--port", "0", "--power-delay", "3")
    try:
        task = task_for(settings, {"ipmi_address": "127.0.0.1", "ipmi_port": ports[0],
                                   "ipmi_username": USER, "ipmi_password": PASSWORD})  # fmt: skip
        power = Drivers(settings).for_node("ipmi", {}).power
        with pytest.raises(DriverError) as e:
            await power.set_power_state(task, base.POWER_ON, timeout=1)
        assert e.value.message == f"IPMI power on at 127.0.0.1:{ports[0]}: still not power on after 1 s"
        await power.set_power_state(task, base.POWER_ON, timeout=10)  # the delayed action lands
    finally:
        stop_process(proc)


async def test_many_bmcs_in_one_process(tmp_path: Path, ipmitool: str) -> None:
    """40 BMCs in one process, read concurrently by one client (whose pyghmi shares a socket between
    BMCs): logins and reads on cached sessions all answer, each with its BMC's own state. (How fast
    is bench/bmc.py's to say, not a test's.)"""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        first = s.getsockname()[1]
    count = 40
    proc, ports = start_bmc("--port", str(first), "--count", str(count))
    try:
        assert ports == list(range(first, first + count))
        settings = Settings(state_dir=tmp_path, enabled_hardware_types=["ipmi"], ipmi={"workers": 8})
        power = Drivers(settings).for_node("ipmi", {}).power
        tasks = [task_for(settings, {"ipmi_address": "127.0.0.1", "ipmi_port": p, "ipmi_username": USER,
                                     "ipmi_password": PASSWORD}) for p in ports]  # fmt: skip
        await tool(ports[3], "power", "on")
        want = [base.POWER_ON if p == ports[3] else base.POWER_OFF for p in ports]
        for _ in range(3):  # logins, then cached sessions
            assert await asyncio.gather(*(power.get_power_state(t) for t in tasks)) == want
        await power.set_power_state(tasks[4], base.POWER_ON)
        assert await tool_power(ports[4]) == base.POWER_ON
    finally:
        stop_process(proc)


async def test_concurrent_calls_to_one_bmc_are_serialised(
    bmc: Bmc, drivers: Drivers, settings: Settings
) -> None:
    ds = drivers.for_node("ipmi", {})
    task = task_for(settings, bmc.info())
    devices = ["pxe", "disk", "cdrom", "bios"] * 5
    await asyncio.gather(*(ds.management.set_boot_device(task, d, True) for d in devices))
    reads = await asyncio.gather(*(ds.power.get_power_state(task) for _ in range(20)))
    assert set(reads) == {base.POWER_OFF}
    assert (await ds.management.get_boot_device(task))["boot_device"] in devices


async def test_session_per_call(bmc: Bmc, tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path, enabled_hardware_types=["ipmi"], ipmi={"session_idle": 0})
    ds = Drivers(settings).for_node("ipmi", {})
    task = task_for(settings, bmc.info())
    for _ in range(3):
        assert await ds.power.get_power_state(task) == base.POWER_OFF
    assert ds.power.client.session_of(ipmi.parse_driver_info(task.node.driver_info)) is None  # type: ignore[attr-defined]


@pytest.fixture(params=[20.0, 0.0], ids=["cached-session", "session-per-call"])
async def sol(bmc: Bmc, tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[tuple[Task, Any]]:
    """A node, its driver set and console; with session_idle 0 every command opens and closes a
    session, which must leave the session the console rides on alone."""
    settings = Settings(
        state_dir=tmp_path,
        enabled_hardware_types=["ipmi"],
        ipmi={"power_poll_interval": 0.05, "session_idle": request.param},
    )
    task = task_for(settings, bmc.info())
    ds = Drivers(settings).for_node("ipmi", {})
    yield task, ds
    await ds.interfaces["console"].stop_console(task)  # type: ignore[attr-defined]


async def test_sol_console_capture(sol: tuple[Task, Any]) -> None:
    task, ds = sol
    settings = task.settings
    console = ds.interfaces["console"]
    assert await console.get_console(task) == {}
    await console.start_console(task)
    path = base.console_log_path(settings, task.node.uuid)
    assert await console.get_console(task) == {"type": "log", "url": str(path)}

    async def logged(text: bytes) -> bool:
        return text in await asyncio.to_thread(path.read_bytes)

    # Commands keep working on the session the console shares, and what the machine prints on
    # its serial port arrives in the log.
    await ds.management.set_boot_device(task, "pxe")
    await ds.power.set_power_state(task, base.POWER_ON)
    await wait_for(lambda: logged(b"power on, booting from pxe (uefi)\r\n"), what=path.read_bytes)
    await ds.power.set_power_state(task, base.SOFT_POWER_OFF)
    await wait_for(lambda: logged(b"ACPI power button: shutting down\r\n"), what=path.read_bytes)

    await console.stop_console(task)
    assert await console.get_console(task) == {}
    size = path.stat().st_size
    await ds.power.set_power_state(task, base.POWER_ON)
    assert await ds.power.get_power_state(task) == base.POWER_ON
    assert path.stat().st_size == size  # nothing is captured once stopped

    # A second start appends to the same log.
    await console.start_console(task)
    await ds.power.reboot(task)
    await wait_for(lambda: counted(path, b"power on, booting from", 2), what=path.read_bytes)


async def counted(path: Path, text: bytes, times: int) -> bool:
    return (await asyncio.to_thread(path.read_bytes)).count(text) == times


async def test_silent_bmc_fails_its_probe(black_hole: int, drivers: Drivers, settings: Settings) -> None:
    power = drivers.for_node("ipmi", {}).power
    task = task_for(settings, {"ipmi_address": "127.0.0.1", "ipmi_port": black_hole, "ipmi_password": "x"})
    started = time.monotonic()
    with pytest.raises(DriverError) as e:
        await power.get_power_state(task)
    assert 2.9 < time.monotonic() - started < 9  # the 3 s probe, not the 10 s timeout
    assert e.value.message == (
        f"IPMI power status at 127.0.0.1:{black_hole} failed: "
        "no answer to Get Channel Authentication Capabilities (3 tries in 3 s)"
    )


async def test_unknown_user_is_a_named_error(bmc: Bmc, drivers: Drivers, settings: Settings) -> None:
    # pyghmi's BMC server drops RAKP message 1 for a user it does not know; pyghmi's client used to
    # restart that login forever.
    power = drivers.for_node("ipmi", {}).power
    task = task_for(settings, bmc.info(ipmi_username="nobody"))
    started = time.monotonic()
    with pytest.raises(DriverError) as e:
        await power.get_power_state(task)
    assert time.monotonic() - started < 30  # bounded restarts, not pyghmi's endless ones
    assert e.value.message == (
        f"IPMI power status at 127.0.0.1:{bmc.port} failed: no answer to the login: waited for RAKP "
        "message 2 through 3 restarts (a BMC that does not know the user name may stay silent)"
    )
    assert await power.get_power_state(task_for(settings, bmc.info())) == base.POWER_OFF


async def test_bmc_silent_under_a_cached_session(bmc: Bmc, drivers: Drivers, settings: Settings) -> None:
    power = drivers.for_node("ipmi", {}).power
    task = task_for(settings, bmc.info())
    assert await power.get_power_state(task) == base.POWER_OFF  # the session is cached now
    bmc.proc.send_signal(signal.SIGSTOP)
    try:
        started = time.monotonic()
        with pytest.raises(DriverError) as e:
            await power.get_power_state(task)
        assert time.monotonic() - started < 9  # the probe's 3 s, not the 10 s timeout
        assert "no answer to Get Channel Authentication Capabilities" in e.value.message
    finally:
        bmc.proc.send_signal(signal.SIGCONT)
    assert await power.get_power_state(task) == base.POWER_OFF


@pytest.mark.parametrize("second_client", [False, True], ids=["kept-session", "session-per-call-client"])
async def test_bmc_restarted_on_its_port(tmp_path: Path, second_client: bool) -> None:
    """A new BMC on the port of a stopped one does not know the old one's sessions: neither the
    client that kept one nor another client, to which pyghmi hands the same session from its
    process-wide registry, may wait on it (it took 18 s; OS port reuse made this a flaky test)."""
    proc, ports = start_bmc("--port", "0")
    try:
        settings = Settings(state_dir=tmp_path, enabled_hardware_types=["ipmi"], ipmi={"timeout": 10})
        power = Drivers(settings).for_node("ipmi", {}).power
        info = {"ipmi_address": "127.0.0.1", "ipmi_port": ports[0], "ipmi_username": USER,
                "ipmi_password": PASSWORD}  # fmt: skip
        await power.set_power_state(task_for(settings, info), base.POWER_ON)  # the session is kept
        stop_process(proc)
        proc, _ = start_bmc("--port", str(ports[0]))  # a new machine, powered off
        if second_client:
            settings = Settings(
                state_dir=tmp_path, enabled_hardware_types=["ipmi"], ipmi={"timeout": 10, "session_idle": 0}
            )
            power = Drivers(settings).for_node("ipmi", {}).power
        started = time.monotonic()
        assert await power.get_power_state(task_for(settings, info)) == base.POWER_OFF
        assert time.monotonic() - started < 9  # answered, not after the 10 s timeout
        assert await power.get_power_state(task_for(settings, info)) == base.POWER_OFF
    finally:
        stop_process(proc)
