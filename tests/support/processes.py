"""Child processes the tests start: the emulated IPMI BMC, and stopping any child the same way."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def stop_process(proc: subprocess.Popen[str], grace: float = 10.0) -> None:
    """SIGTERM, SIGKILL after `grace` seconds, and close the pipe the test read from."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


def start_ipmi_bmc(
    username: str, password: str, *args: str, log: Path | None = None
) -> tuple[subprocess.Popen[str], list[int]]:
    """`python -m bootforge.lab.ipmi_bmc --username U --password P ARGS` (127.0.0.1 by default), once
    it printed "ready PORT..." (every BMC listens); the ports. Its stderr goes to `log` when given,
    and the failure message quotes it."""
    argv = [sys.executable, "-m", "bootforge.lab.ipmi_bmc", "--username", username, "--password", password]
    err = log.open("ab") if log is not None else None
    try:
        proc = subprocess.Popen([*argv, *args], stdout=subprocess.PIPE, stderr=err, text=True)
    finally:
        if err is not None:
            err.close()
    assert proc.stdout is not None
    line = proc.stdout.readline()  # "ready PORT ..." once every BMC listens; EOF if it died
    if not line.startswith("ready "):
        stop_process(proc)
        said = log.read_text()[-1000:] if log is not None else repr(line)
        raise AssertionError(f"the emulated IPMI BMC did not start: {said}")
    return proc, [int(p) for p in line.split()[1:]]
