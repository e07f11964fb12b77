"""Stopping a daemon a test started that forked away from it (dhclient once bound)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path


def stop_daemon(pidfile: Path, wait: bool) -> None:
    """SIGTERM the daemon whose PID `pidfile` holds, if it is still that daemon (its command line
    names the file). `wait`: it did bind, so its child writes the file a moment after the parent
    returned; wait (bounded) for it."""
    deadline = time.monotonic() + 5
    while wait and not pidfile.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        pid = int(pidfile.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return  # it never forked (no lease) or is gone already
    if str(pidfile).encode() in cmdline:  # the PID is still that daemon's, not a reused one
        os.kill(pid, signal.SIGTERM)
    pidfile.unlink(missing_ok=True)
