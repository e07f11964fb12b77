"""Processes of a lab: found and ended by PID, never by name, and only when they are still the lab's."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from pathlib import Path

__all__ = ["cmdline", "end_process", "exited", "free_port", "lab_processes"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cmdline(pid: int) -> bytes | None:
    """The NUL-separated command line; b"" for a zombie, None when there is no such process."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None


def end_process(pid: int, marker: str, grace: float = 5.0) -> bool:
    """SIGTERM, then SIGKILL, the process `pid` if its command line still contains `marker`.

    The marker (the lab directory, or the namespace name) keeps a recycled PID of an unrelated
    process from being signalled.
    """
    for sig in (signal.SIGTERM, signal.SIGKILL):
        cmd = cmdline(pid)
        if not cmd or marker.encode() not in cmd:
            return False
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return True
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            reap(pid)
            if cmdline(pid) in (None, b""):
                return True
            time.sleep(0.1)
    return True


def reap(pid: int) -> None:
    # A child of this very process (the fixture's lab) would stay a zombie until waited for.
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


# What only the lab's own processes have on their command lines (with the lab directory).
_SIGNATURES = (b"bootforge.lab.forward", b"bootforge.lab.ra", b"serve.toml", b"dnsmasq.conf", b"disk.qcow2")


def lab_processes(directory: str) -> list[int]:
    """PIDs of processes a lab in `directory` started: forwarder, router adverts, serve, dnsmasq, QEMU.

    Matched by the lab directory *and* a file only those processes name, so a shell or a
    `timeout` wrapped around a `bootforge lab` command is never taken for one of them.
    """
    found = []
    needle = directory.encode()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            cmd = cmdline(int(entry.name))
            if cmd and needle in cmd and any(sig in cmd for sig in _SIGNATURES):
                found.append(int(entry.name))
    return found


def exited(pid: int) -> bool:
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return cmdline(pid) in (None, b"")
    return done == pid
