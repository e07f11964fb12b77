"""Finding 16 of #11: `bootforge demo` and `bootforge lab up` remove their lab on SIGTERM and SIGHUP
(a closed terminal), as on Ctrl-C: no namespace, `bootforge serve`, QEMU or lab directory is left.

Marked netns, qemu, slow; run with `pytest tests/integration/test_lab_signals.py`.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.lab import lab_unavailable_reason, wait_until
from support.service import BOOTFORGE

from bootforge.drivers import qemu_machine as vm
from bootforge.lab import netns, procs, sample_os
from bootforge.lab.lab import LabState

pytestmark = [pytest.mark.netns, pytest.mark.qemu, pytest.mark.slow]

ENV = {k: v for k, v in os.environ.items() if not k.startswith("BOOTFORGE_")}


def _state(directory: Path) -> LabState | None:
    try:
        return LabState.load(directory)
    except Exception:  # not written yet, or being written
        return None


def _vm_running(directory: Path) -> bool:
    state = _state(directory)
    pid = vm.read_pid(Path(state.vms[0].pid_file)) if state and state.vms else None
    return pid is not None and vm.pid_alive(pid)


def _all_pids() -> list[int]:
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]


@pytest.fixture
def run(tmp_path: Path) -> Iterator[tuple[Path, list[subprocess.Popen[bytes]]]]:
    """The lab directory and the commands the test starts; whatever is left is removed afterwards."""
    reason = lab_unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    directory = tmp_path / "lab"
    started: list[subprocess.Popen[bytes]] = []
    yield directory, started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if directory.exists():  # the fix failed: do not leave the lab on the machine
        subprocess.run(
            [BOOTFORGE, "lab", "down", "--dir", str(directory)], capture_output=True, env=ENV, timeout=120
        )


def _assert_nothing_left(directory: Path, state: LabState, pids: list[int]) -> None:
    assert [p for p in procs.lab_processes(str(directory)) if procs.cmdline(p)] == []
    assert [p for p in pids if procs.cmdline(p)] == [], "serve, forwarder or QEMU still running"
    left = [n for n in netns.list_namespaces() if n.startswith(state.prefix)]
    assert left == [], f"namespaces left behind: {left}"
    assert not directory.exists()
    qemu_left = [p for p in _all_pids() if str(directory).encode() in (procs.cmdline(p) or b"")]
    assert qemu_left == []


def _recorded_pids(state: LabState) -> list[int]:
    pids = list(state.pids.values())
    for rec in state.vms:
        pid = vm.read_pid(Path(rec.pid_file))
        if pid is not None:
            pids.append(pid)
    return pids


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_demo_removes_its_lab_on(
    run: tuple[Path, list[subprocess.Popen[bytes]]], sig: signal.Signals, tmp_path: Path
) -> None:
    directory, started = run
    missing = sorted(set(sample_os.missing_tools("bios")) | set(sample_os.missing_tools("uefi")))
    if missing:
        pytest.skip(f"the demo's sample OS images need {', '.join(missing)}")
    log = tmp_path / "demo.log"
    with log.open("wb") as out:
        demo = subprocess.Popen(
            [BOOTFORGE, "demo", "--vms", "1", "--firmware", "bios", "--dir", str(directory)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=ENV,
        )
    started.append(demo)
    # The demo stays up until it is told to stop, so its first VM running (inspection has powered
    # it on) is a point where the namespace, serve and QEMU all exist and the demo is still running.
    wait_until(lambda: demo.poll() is not None or _vm_running(directory), 900, "the demo's VM runs")
    assert demo.poll() is None, f"the demo ended early:\n{log.read_text()[-3000:]}"
    state = _state(directory)
    assert state is not None and state.netns in netns.list_namespaces()
    pids = _recorded_pids(state)
    assert state.pids and all(procs.cmdline(p) for p in pids)

    demo.send_signal(sig)
    code = demo.wait(180)
    output = log.read_text()
    _assert_nothing_left(directory, state, pids)
    assert code == 128 + sig, f"exit code {code}:\n{output[-3000:]}"
    assert "removing the lab" in output


def test_lab_up_interrupted_by_sigterm_removes_what_it_made(
    run: tuple[Path, list[subprocess.Popen[bytes]]], tmp_path: Path
) -> None:
    directory, started = run
    log = tmp_path / "up.log"
    with log.open("wb") as out:
        up = subprocess.Popen(
            [
                BOOTFORGE,
                "lab",
                "up",
                "--vms",
                "2",
                "--memory",
                "256",
                "--ramdisk",
                "probe",
                "--dir",
                str(directory),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=ENV,
        )
    started.append(up)

    def serving() -> bool:
        state = _state(directory)
        return up.poll() is not None or bool(state and "serve" in state.pids)

    wait_until(serving, 300, "lab up has started bootforge serve")
    # `lab up` returns once its VMs are on; stopped here it cannot finish before the SIGTERM lands
    # (delivered when it continues), so the signal always arrives half-way through the build.
    up.send_signal(signal.SIGSTOP)
    assert up.poll() is None, f"lab up ended before the test could stop it:\n{log.read_text()[-3000:]}"
    state = _state(directory)
    assert state is not None and state.netns in netns.list_namespaces()
    pids = _recorded_pids(state)
    up.send_signal(signal.SIGTERM)
    up.send_signal(signal.SIGCONT)
    code = up.wait(180)
    # Anything it started after the snapshot above is found by the lab directory in its command line.
    _assert_nothing_left(directory, state, pids)
    assert code == 128 + signal.SIGTERM, f"exit code {code}:\n{log.read_text()[-3000:]}"
