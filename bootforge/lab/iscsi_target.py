"""An iSCSI target for the lab: Debian's `tgt` (tgtd, a user-space target: no kernel configfs, so
nothing global to the host is configured), started inside the lab's network namespace, listening on
one address there only, serving one file as a LUN, optionally behind CHAP and an initiator-name ACL.

tgtd's management socket is a file, /var/run/tgtd/socket.<control port>, shared by every namespace:
each target gets its own control port, and its socket files are removed when it stops. It is stopped
the way its systemd unit does (offline, then `tgtadm --op delete --mode system`), and by PID with
SIGKILL if that did not end it within the timeout (tgtd ignores SIGTERM).
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["IscsiTargetError", "TgtTarget", "missing_tools"]

SOCKET_DIR = Path("/var/run/tgtd")
TIMEOUT = 15.0


class IscsiTargetError(RuntimeError):
    pass


def missing_tools() -> list[str]:
    """What the lab's iSCSI target needs and this host lacks (Debian package tgt)."""
    return [t for t in ("tgtd", "tgtadm") if shutil.which(t) is None]


@dataclass
class TgtTarget:
    netns: str
    address: str
    iqn: str
    backing_file: Path
    log: Path
    port: int = 3260
    lun: int = 1
    initiator_iqn: str | None = None
    chap_user: str | None = None
    chap_password: str | None = None
    control_port: int = 0
    pid: int | None = None
    _proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def start(self) -> None:
        if self.control_port == 0:
            # Not in use by another tgtd of this host (their sockets share /var/run/tgtd).
            for _ in range(100):
                candidate = random.randint(1000, 30000)  # tgtd takes 0-32767
                if not (SOCKET_DIR / f"socket.{candidate}").exists():
                    self.control_port = candidate
                    break
        argv = [
            "ip", "netns", "exec", self.netns, "tgtd", "-f", "-C", str(self.control_port),
            "--iscsi", f"portal={self.address}:{self.port}",
        ]  # fmt: skip
        with open(self.log, "ab") as out:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
        self.pid, self._proc = proc.pid, proc
        try:
            self._wait_ready(proc)
            self._adm("--mode", "target", "--op", "new", "--tid", "1", "--targetname", self.iqn)
            self._adm(
                "--mode", "logicalunit", "--op", "new", "--tid", "1", "--lun", str(self.lun),
                "--backing-store", str(self.backing_file),
            )  # fmt: skip
            if self.initiator_iqn:
                self._adm(
                    "--mode", "target", "--op", "bind", "--tid", "1", "--initiator-name", self.initiator_iqn
                )
            else:
                self._adm("--mode", "target", "--op", "bind", "--tid", "1", "--initiator-address", "ALL")
            if self.chap_user and self.chap_password:
                self._adm(
                    "--mode", "account", "--op", "new", "--user", self.chap_user,
                    "--password", self.chap_password,
                )  # fmt: skip
                self._adm("--mode", "account", "--op", "bind", "--tid", "1", "--user", self.chap_user)
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, proc: subprocess.Popen[bytes]) -> None:
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise IscsiTargetError(f"tgtd exited with {proc.returncode}; see {self.log}")
            if self._adm("--mode", "target", "--op", "show", check=False).returncode == 0:
                return
            time.sleep(0.2)
        raise IscsiTargetError(f"tgtd did not answer on control port {self.control_port} in {TIMEOUT:.0f} s")

    def _adm(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        argv = ["ip", "netns", "exec", self.netns, "tgtadm", "-C", str(self.control_port), "--lld", "iscsi"]
        p = subprocess.run([*argv, *args], capture_output=True, text=True, timeout=TIMEOUT)
        if check and p.returncode != 0:
            # The command line may hold the CHAP password: only the mode and op are named.
            raise IscsiTargetError(
                f"tgtadm {' '.join(args[:4])} failed: {p.stderr.strip() or p.stdout.strip()}"
            )
        return p

    def show(self) -> str:
        """`tgtadm --mode target --op show`: targets, LUNs and the initiators connected now."""
        return self._adm("--mode", "target", "--op", "show").stdout

    def stop(self) -> None:
        if self.pid is not None:
            with contextlib.suppress(subprocess.SubprocessError, OSError):
                self._adm("--mode", "sys", "--op", "update", "--name", "State", "-v", "offline", check=False)
                self._adm("--mode", "system", "--op", "delete", check=False)
            if not _exited(self._proc, 5.0):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, signal.SIGKILL)
                _exited(self._proc, 5.0)
            self.pid, self._proc = None, None
        for name in (f"socket.{self.control_port}", f"socket.{self.control_port}.lock"):
            with contextlib.suppress(FileNotFoundError):
                (SOCKET_DIR / name).unlink()


def _exited(proc: subprocess.Popen[bytes] | None, timeout: float) -> bool:
    """Reap our tgtd within `timeout`; True once it is gone."""
    if proc is None:
        return True
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        return False
    return True
