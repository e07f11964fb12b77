"""Start bootforge or Ironic on 127.0.0.1 in a fresh state dir, probe it, measure it, stop it.

Each server runs in its own session (process group == the PID we started), so stopping it
reaches the workers it forked and nothing else.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

READY_TIMEOUT_S = 120.0
STOP_GRACE_S = 10.0
IRONIC_CLEANING = "[conductor]automated_clean=false: provide and undeploy pass cleaning with no steps"

_IRONIC_CONF = """\
[DEFAULT]
auth_strategy = noauth
rpc_transport = none
state_path = {state}
host = bench-1
enabled_hardware_types = fake-hardware
enabled_boot_interfaces = fake
enabled_deploy_interfaces = fake
enabled_management_interfaces = fake
enabled_power_interfaces = fake
enabled_inspect_interfaces = fake,no-inspect
enabled_raid_interfaces = fake,no-raid
enabled_bios_interfaces = fake,no-bios
enabled_firmware_interfaces = fake,no-firmware
enabled_rescue_interfaces = fake,no-rescue
enabled_storage_interfaces = fake,noop
enabled_console_interfaces = fake,no-console
enabled_vendor_interfaces = fake,no-vendor
enabled_network_interfaces = noop
default_network_interface = noop
default_resource_class = bench

[api]
host_ip = 127.0.0.1
port = {port}

[database]
connection = sqlite:///{state}/ironic.sqlite

[dhcp]
dhcp_provider = none

[nova]
send_power_notifications = false

[conductor]
automated_clean = false

[oslo_concurrency]
lock_path = {state}/locks
"""


@dataclass
class Server:
    name: str
    proc: subprocess.Popen[bytes]
    base_url: str
    state_dir: Path
    log_path: Path
    cleaning: str


@dataclass(frozen=True)
class Memory:
    rss_mib: float
    hwm_mib: float
    processes: int


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _spawn(
    name: str,
    argv: Sequence[str],
    state_dir: Path,
    port: int,
    cleaning: str,
    env: dict[str, str] | None = None,
) -> Server:
    log_path = state_dir / f"{name}.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            list(argv),
            cwd=state_dir,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=env,
        )
    return Server(name, proc, f"http://127.0.0.1:{port}", state_dir, log_path, cleaning)


def launch_ironic(venv: Path) -> Server:
    state_dir = Path(tempfile.mkdtemp(prefix="bench-ironic-"))
    port = free_port()
    (state_dir / "locks").mkdir()
    conf = state_dir / "ironic.conf"
    conf.write_text(_IRONIC_CONF.format(state=state_dir, port=port))
    try:
        subprocess.run(
            [str(venv / "bin" / "ironic-dbsync"), "--config-file", str(conf), "create_schema"],
            cwd=state_dir,
            check=True,
            capture_output=True,
            timeout=120,
        )
    except (subprocess.SubprocessError, OSError):
        shutil.rmtree(state_dir, ignore_errors=True)
        raise
    argv = [str(venv / "bin" / "ironic"), "--config-file", str(conf)]
    return _spawn("ironic", argv, state_dir, port, IRONIC_CLEANING)


def launch_bootforge(binary: Path, extra_args: Sequence[str], automated_clean: bool) -> Server:
    """bootforge serve with its defaults (zero fake delays) but for cleaning, and fake-hardware on."""
    state_dir = Path(tempfile.mkdtemp(prefix="bench-bootforge-"))
    port = free_port()
    argv = [
        str(binary),
        "serve",
        "--state-dir",
        str(state_dir / "state"),
        "--listen",
        f"127.0.0.1:{port}",
        *extra_args,
    ]
    # Settings inherited from the caller's shell would make runs incomparable.
    env = {k: v for k, v in os.environ.items() if not k.startswith("BOOTFORGE_")}
    env["BOOTFORGE_AUTOMATED_CLEAN"] = "true" if automated_clean else "false"
    env["BOOTFORGE_ENABLED_HARDWARE_TYPES"] = '["fake-hardware"]'  # off by default
    cleaning = (
        "automated_clean=true: provide and undeploy run the zero-delay fake clean step"
        if automated_clean
        else "automated_clean=false: provide and undeploy pass cleaning with no steps"
    )
    return _spawn("bootforge", argv, state_dir, port, cleaning, env)


def log_tail(server: Server, lines: int = 25) -> str:
    try:
        text = server.log_path.read_text(errors="replace")
    except OSError as exc:
        return f"(no log: {exc})"
    return "\n".join(text.splitlines()[-lines:])


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return int(resp.status), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, b""
    except (urllib.error.URLError, OSError):
        return 0, b""


def _drivers_ready(status: int, body: bytes) -> bool:
    # A 404 means the server has no drivers resource: the root answering is then all we can ask.
    if status == 404:
        return True
    if status != 200:
        return False
    with contextlib.suppress(ValueError):
        names = {d.get("name") for d in json.loads(body).get("drivers", [])}
        return "fake-hardware" in names
    return False


def wait_ready(server: Server, timeout_s: float = READY_TIMEOUT_S) -> float:
    """Wait until the API answers and a conductor offers fake-hardware; returns seconds taken."""
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        if server.proc.poll() is not None:
            code = server.proc.returncode
            raise RuntimeError(f"{server.name} exited with {code} while starting:\n{log_tail(server)}")
        if _get(server.base_url + "/")[0] == 200 and _drivers_ready(*_get(server.base_url + "/v1/drivers")):
            return time.monotonic() - start
        time.sleep(0.2)
    raise RuntimeError(f"{server.name} not ready after {timeout_s:.0f} s:\n" + log_tail(server))


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            found.extend(int(c) for c in (task / "children").read_text().split())
    return found


def process_tree(pid: int) -> list[int]:
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(_children(current))
    return tree


def _status_kib(pid: int, key: str) -> int:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def memory(server: Server) -> Memory:
    """RSS and high-water mark summed over the server and every worker it forked."""
    pids = process_tree(server.proc.pid)
    rss = sum(_status_kib(p, "VmRSS") for p in pids)
    hwm = sum(_status_kib(p, "VmHWM") for p in pids)
    return Memory(rss / 1024, hwm / 1024, len(pids))


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


def stop(server: Server, keep_state: bool = False) -> None:
    """SIGTERM the server's process group, SIGKILL it after a grace period, drop its state dir."""
    leader = server.proc.pid
    workers = process_tree(leader)[1:]
    if server.proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(leader, signal.SIGTERM)
        try:
            server.proc.wait(STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(leader, signal.SIGKILL)
            server.proc.wait(STOP_GRACE_S)
    # Workers may outlive a leader that exited on its own; only those still in its group are ours.
    for pid in workers:
        if _pgid(pid) == leader:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    if not keep_state:
        shutil.rmtree(server.state_dir, ignore_errors=True)
