"""finalize_rescue: open a login on the rescued machine (root, over SSH on port 22, served by dropbear).

The conductor sends only the crypt SHA-512 hash of the rescue password (never the password), and the
public keys allowed in; they go into /etc/shadow and /root/.ssh/authorized_keys of the ramdisk, which
lives in memory. The machine's disks are not touched: the operator mounts what they need.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from typing import Any

from . import log
from .common import CommandError, Context, Progress

PORT = 22
DROPBEAR = "/usr/sbin/dropbear"
PIDFILE = "run/dropbear.pid"
# crypt(3) SHA-512: $6$[rounds=N$]salt$hash, the 86-character hash of the base-64 alphabet.
HASH = re.compile(r"^\$6\$(rounds=\d{4,9}\$)?[./A-Za-z0-9]{1,16}\$[./A-Za-z0-9]{86}$")
KEY = re.compile(r"^(ssh-(ed25519|rsa|dss)|ecdsa-sha2-nistp(256|384|521)) [A-Za-z0-9+/=]+( [^\n]*)?$")
MAX_KEYS = 32


def run(args: dict[str, Any], ctx: Context, progress: Progress) -> dict[str, Any]:
    hashed = args.get("hashed_rescue_password")
    if not isinstance(hashed, str) or not HASH.match(hashed):
        # Never quote the value: it is a password hash.
        raise CommandError("finalize_rescue: hashed_rescue_password must be a crypt SHA-512 ($6$) hash")
    keys = args.get("authorized_keys") or []
    if (
        not isinstance(keys, list)
        or len(keys) > MAX_KEYS
        or not all(isinstance(k, str) and KEY.match(k) for k in keys)
    ):
        raise CommandError(
            f"finalize_rescue: authorized_keys must be a list of at most {MAX_KEYS} public key lines"
        )
    root = ctx.sys_root
    set_root_password(root, hashed)
    write_authorized_keys(root, keys)
    progress(1, 2, "rescue login configured")
    started = start_server(root)
    log(f"rescue: dropbear {'started' if started else 'already running'} on port {PORT}")
    return {"ssh_port": PORT, "user": "root", "authorized_keys": len(keys), "server": "dropbear"}


def _write(path: Path, data: str, mode: int) -> None:
    """Write through a temporary file created with `mode`: the hash is never readable by others."""
    tmp = path.with_name(f".{path.name}.new")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as f:
        f.write(data)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def set_root_password(root: Path, hashed: str) -> None:
    etc = root / "etc"
    etc.mkdir(parents=True, exist_ok=True)
    shadow = etc / "shadow"
    lines = shadow.read_text().splitlines() if shadow.exists() else []
    kept = [line for line in lines if not line.startswith("root:")]
    # Fields: name:hash:lastchange(days, 1 = long ago, so no expiry prompt):min:max:warn:::
    _write(shadow, "\n".join([f"root:{hashed}:1:0:99999:7:::", *kept]) + "\n", 0o600)
    passwd = etc / "passwd"
    text = passwd.read_text() if passwd.exists() else ""
    if not any(line.startswith("root:") for line in text.splitlines()):
        _write(passwd, "root:x:0:0:root:/root:/bin/sh\n" + text, 0o644)
    shells = etc / "shells"
    if not shells.exists():
        # dropbear refuses a user whose shell /etc/shells does not list.
        _write(shells, "/bin/sh\n", 0o644)


def write_authorized_keys(root: Path, keys: list[str]) -> None:
    ssh = root / "root" / ".ssh"
    ssh.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(ssh, 0o700)
    _write(ssh / "authorized_keys", "".join(k.strip() + "\n" for k in keys), 0o600)


def start_server(root: Path) -> bool:
    """Start dropbear (it daemonises); False if the one started by an earlier rescue still runs."""
    pidfile = root / PIDFILE
    try:
        pid = int(pidfile.read_text().strip())
        os.kill(pid, 0)
        return False
    except (OSError, ValueError):
        pass
    if not os.path.exists(DROPBEAR):
        raise CommandError(
            f"finalize_rescue: {DROPBEAR} is not in this ramdisk (rebuild it with `bootforge ramdisk build`)"
        )
    (root / "etc" / "dropbear").mkdir(parents=True, exist_ok=True)
    pts = Path("/dev/pts")
    if not os.path.ismount(pts):
        # Interactive logins need pseudo-terminals; a failure here still leaves `ssh host command` working.
        pts.mkdir(exist_ok=True)
        subprocess.run(["mount", "-t", "devpts", "devpts", str(pts)], check=False, timeout=10)
    # -R: host keys made on first use (in /etc/dropbear), -p: the port, -P: where it writes its pid.
    argv = [DROPBEAR, "-R", "-p", str(PORT), "-P", str(pidfile)]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        raise CommandError(f"finalize_rescue: cannot start dropbear: {exc}") from None
    if proc.returncode != 0:
        raise CommandError(
            f"finalize_rescue: dropbear exited {proc.returncode}: {proc.stderr.strip()[-300:]}"
        )
    return True
