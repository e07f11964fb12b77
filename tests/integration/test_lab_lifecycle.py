"""End to end: proxyDHCP next to dnsmasq, and `bootforge lab down` after a `lab up` that was killed.

Marked qemu, netns, slow; run with `pytest tests/integration/test_lab_lifecycle.py`.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
from support.lab import (
    BOOT_TIMEOUT,
    LabFactory,
    console_offset,
    lab_unavailable_reason,
    wait_console,
    wait_until,
)
from support.service import BOOTFORGE

from bootforge.drivers import qemu_machine as vm
from bootforge.lab import netns, procs
from bootforge.lab.lab import Lab, LabState
from bootforge.lab.ramdisk import API_MARKER, FAIL_MARKER

pytestmark = [pytest.mark.qemu, pytest.mark.netns, pytest.mark.slow]

DNSMASQ_POOL = (ipaddress.IPv4Address("10.77.0.200"), ipaddress.IPv4Address("10.77.0.250"))


def test_proxy_dhcp_next_to_dnsmasq(make_lab: LabFactory) -> None:
    """dnsmasq leases addresses only (no boot options); bootforge's proxyDHCP boots SeaBIOS and OVMF."""
    h = make_lab(vms=2, firmware="mixed", dhcp="proxy")  # vm1 SeaBIOS + iPXE ROM, vm2 OVMF PXE
    h.serve_ramdisk(*h.vms)
    offsets = {rec.name: console_offset(rec) for rec in h.vms}
    start = time.monotonic()
    for rec in h.vms:
        h.power(rec, "power on")
    dnsmasq_log = Path(h.lab.state.dir) / "dnsmasq.log"
    for rec in h.vms:
        line = wait_console(rec, re.compile(f"{API_MARKER}|{FAIL_MARKER}"), BOOT_TIMEOUT, offsets[rec.name])
        took = time.monotonic() - start
        print(f"\nproxy DHCP, {rec.firmware}: ramdisk reached the API {took:.1f} s after power on")
        assert API_MARKER in line, line
        ip = ipaddress.IPv4Address(re.search(r"ip=(\S+)", line)[1])  # type: ignore[index]
        assert DNSMASQ_POOL[0] <= ip <= DNSMASQ_POOL[1], f"{ip} is not from dnsmasq's pool"
        assert re.search(rf"DHCPACK\(eth0\) {ip} {rec.mac}", dnsmasq_log.read_text()), "dnsmasq leased it"
        kinds = {e["event"].split()[0] for e in h.history(rec, "dhcp")}
        assert kinds & {"dhcp.proxy_offer", "dhcp.proxy_ack"}, kinds
        assert not kinds & {"dhcp.offer", "dhcp.ack"}, f"bootforge leased addresses in proxy mode: {kinds}"


def _lab_processes(directory: Path) -> list[int]:
    return [p for p in procs.lab_processes(str(directory)) if procs.cmdline(p)]


def test_lab_down_after_lab_up_was_killed(tmp_path: Path) -> None:
    reason = lab_unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    directory = tmp_path / "lab"
    env = {k: v for k, v in os.environ.items() if not k.startswith("BOOTFORGE_")}
    up = subprocess.Popen(
        [BOOTFORGE, "lab", "up", "--vms", "3", "--memory", "256", "--dir", str(directory)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    state: LabState | None = None
    try:

        def first_vm_running() -> bool:
            nonlocal state
            if up.poll() is not None or not (directory / "lab.json").exists():
                return up.poll() is not None
            state = LabState.load(directory)
            pid = vm.read_pid(Path(state.vms[0].pid_file)) if state.vms else None
            return pid is not None and vm.pid_alive(pid)

        wait_until(first_vm_running, 120, "lab up has started its first VM")
        up.send_signal(signal.SIGKILL)  # half-way: VMs, serve and the forwarder are left running
        up.wait(10)
        state = LabState.load(directory)
        assert len(_lab_processes(directory)) >= 3, "the killed lab up left its processes running"
        assert state.netns in netns.list_namespaces()
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()
        result = subprocess.run(
            [BOOTFORGE, "lab", "down", "--dir", str(directory)],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
    assert result.returncode == 0, result.stdout + result.stderr
    assert _lab_processes(directory) == []
    assert state is not None
    left = [n for n in netns.list_namespaces() if n.startswith(state.prefix)]
    assert left == [], f"namespaces left behind: {left}"  # the bridge and taps lived in them
    assert not directory.exists()
    qemu_left = [
        p for p in _all_pids() if vm.pid_alive(p) and str(directory).encode() in (procs.cmdline(p) or b"")
    ]
    assert qemu_left == []


def _all_pids() -> list[int]:
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]


def test_lab_status_and_down_from_a_fresh_process(make_lab: LabFactory) -> None:
    """`lab status` reads everything from lab.json; `lab down` works without the process that made the lab."""
    h = make_lab(vms=1)
    rec = h.vms[0]
    h.power(rec, "power on")
    wait_console(rec, "bootforge: nothing to boot for this machine now", BOOT_TIMEOUT)
    # The script does not name the node or its state (anyone can fetch it); its timeline does.
    deadline = time.monotonic() + 30
    while not any("node lab-vm1 is manageable" in e["event"] for e in h.history(rec, "boot")):
        assert time.monotonic() < deadline, h.history(rec)
        time.sleep(0.2)
    env = {k: v for k, v in os.environ.items() if not k.startswith("BOOTFORGE_")}
    status = subprocess.run(
        [BOOTFORGE, "lab", "status", "--dir", h.lab.state.dir, "--lines", "20"],
        capture_output=True,
        text=True,
        env={**env, "COLUMNS": "200"},
        timeout=60,
    )
    assert status.returncode == 0, status.stderr
    assert "power on" in status.stdout and "manageable" in status.stdout
    assert "nothing to boot for this machine now" in status.stdout  # the console tail
    saved = json.loads((Path(h.lab.state.dir) / "lab.json").read_text())
    down = subprocess.run(
        [BOOTFORGE, "lab", "down", "--dir", h.lab.state.dir],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert down.returncode == 0, down.stderr
    assert saved["prefix"] + "net" not in netns.list_namespaces()
    assert h.qemu_pid(rec) is None
    assert not Path(h.lab.state.dir).exists()
    Lab(Path(saved["dir"]), LabState(**{**saved, "vms": []})).down()  # a second down finds nothing: no error
