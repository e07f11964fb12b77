"""HTTP artifact throughput: bootforge's HttpBootServer against nginx, on 127.0.0.1.

A 512 MiB file of random bytes is served by each server in turn (nginx 1.22 from Debian with
`sendfile on`, one worker, its own config, pid and logs in a temp dir, `daemon off`; bootforge in
its own process on the default asyncio loop). For 1, 4 and 16 concurrent clients, every client is
a curl process that fetches the file several times (2 GiB per phase in all) over one kept-alive
connection to /dev/null; MiB/s = all bytes received / wall time of the phase. Both servers run at
once and phases alternate between them for --rounds rounds; the median round is reported. Each
transfer's status and size are checked. Server CPU seconds per GiB come from /proc/PID/stat
(nginx: its worker).

    .venv/bin/python bench/netboot_http.py            # 512 MiB, 1/4/16 clients
    .venv/bin/python bench/netboot_http.py --quick    # 64 MiB

Needs curl and Debian's nginx (`nginx-light` is enough). Installing nginx may start a host service:
install it with a /usr/sbin/policy-rc.d that exits 101. Target: bootforge >= 0.8x nginx.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MiB = 1024 * 1024
TARGET = 0.8
PHASE_TIMEOUT_S = 300.0
READY_TIMEOUT_S = 20.0

NGINX_CONF = """\
daemon off;
worker_processes 1;
user root;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 100000;
    keepalive_timeout 60;
    client_body_temp_path {tmp}/body;
    default_type application/octet-stream;
    server {{
        listen 127.0.0.1:{port};
        root {root};
    }}
}}
"""

BOOTFORGE_CHILD = """\
import asyncio, signal, sys
sys.path.insert(0, {repo!r})
from bootforge.servers.http_boot import HttpBootServer

async def main():
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with HttpBootServer({root!r}, port={port}):
        print("ready", flush=True)
        await stop.wait()

asyncio.run(main())
"""


@dataclass
class Result:
    clients: int
    mib_s: float
    cpu_s_per_gib: float
    errors: int


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def make_artifact(directory: Path, size_mib: int) -> Path:
    path = directory / "deploy.img"
    block = os.urandom(MiB)
    with open(path, "wb") as f:
        for _ in range(size_mib):
            f.write(block)
    path.chmod(0o644)
    return path


def wait_listening(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.05)
    raise RuntimeError("server did not start listening")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def nginx_worker(master: int) -> int:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == master:
                    return int(entry.name)
    return master


def start_nginx(tmp: Path, root: Path, port: int) -> tuple[subprocess.Popen[bytes], int]:
    tmp.mkdir(exist_ok=True)
    (tmp / "body").mkdir()
    conf = tmp / "nginx.conf"
    conf.write_text(NGINX_CONF.format(tmp=tmp, root=root, port=port))
    proc = subprocess.Popen(
        ["nginx", "-p", str(tmp), "-e", str(tmp / "error.log"), "-c", str(conf)],
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    wait_listening(port, proc)
    return proc, nginx_worker(proc.pid)


def start_bootforge(root: Path, port: int) -> tuple[subprocess.Popen[bytes], int]:
    code = BOOTFORGE_CHILD.format(repo=str(REPO), root=str(root), port=port)
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        start_new_session=True,
    )
    wait_listening(port, proc)
    return proc, proc.pid


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        # nginx: SIGQUIT is its graceful stop; the bootforge child stops on SIGTERM.
        proc.send_signal(signal.SIGQUIT if proc.args[0] == "nginx" else signal.SIGTERM)  # type: ignore[index]
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def one_client(url: str, repeat: int, size: int) -> tuple[int, int]:
    """(bytes received, failed transfers) for one curl process fetching url `repeat` times."""
    args = ["curl", "-s", "--no-buffer"]
    for _ in range(repeat):
        args += ["-o", "/dev/null", "-w", "%{http_code} %{size_download}\\n", url]
    proc = await asyncio.create_subprocess_exec(*args, stdout=asyncio.subprocess.PIPE)
    out, _ = await proc.communicate()
    received = failed = 0
    lines = out.decode().split()
    for code, got in zip(lines[::2], lines[1::2], strict=True):
        received += int(got)
        failed += code != "200" or int(got) != size
    failed += repeat - len(lines) // 2
    return received, failed


async def phase(url: str, clients: int, repeat: int, size: int, pid: int) -> Result:
    cpu0, t0 = cpu_seconds(pid), time.monotonic()
    runs = [one_client(url, repeat, size) for _ in range(clients)]
    done = await asyncio.wait_for(asyncio.gather(*runs), PHASE_TIMEOUT_S)
    elapsed, cpu = time.monotonic() - t0, cpu_seconds(pid) - cpu0
    received = sum(r for r, _ in done)
    return Result(
        clients, received / MiB / elapsed, cpu / max(received / (1 << 30), 1e-9), sum(f for _, f in done)
    )


def measure(
    tmp: Path, root: Path, size: int, plan: list[tuple[int, int]], rounds: int
) -> dict[str, list[Result]]:
    """Both servers run side by side; phases alternate between them, round after round, so that
    load from other jobs on the shared machine hits both alike. Reported: the median round."""
    ports = {"nginx": free_port(), "bootforge": free_port()}
    servers = {
        "nginx": start_nginx(tmp / "nginx", root, ports["nginx"]),
        "bootforge": start_bootforge(root, ports["bootforge"]),
    }
    try:
        urls = {name: f"http://127.0.0.1:{port}/deploy.img" for name, port in ports.items()}
        for url in urls.values():
            asyncio.run(one_client(url, 1, size))  # warm the page cache and the servers
        samples: dict[tuple[str, int], list[Result]] = {}
        for n in range(rounds):
            for clients, repeat in plan:
                for name, (_, pid) in servers.items():
                    r = asyncio.run(phase(urls[name], clients, repeat, size, pid))
                    samples.setdefault((name, clients), []).append(r)
                    line = f"{r.mib_s:8.0f} MiB/s  {r.cpu_s_per_gib:.3f} CPU-s/GiB"
                    print(f"  round {n + 1} {name:9} {clients:2} clients: {line}", flush=True)
        return {name: [_median(samples[(name, c)]) for c, _ in plan] for name in servers}
    finally:
        for proc, _ in servers.values():
            stop(proc)


def _median(results: list[Result]) -> Result:
    ordered = sorted(results, key=lambda r: r.mib_s)
    middle = ordered[len(ordered) // 2]
    middle.errors = sum(r.errors for r in results)
    return middle


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size-mib", type=int, default=512)
    parser.add_argument("--quick", action="store_true", help="64 MiB file")
    parser.add_argument("--clients", default="1,4,16", help="comma-separated client counts")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds; the median is reported")
    args = parser.parse_args()
    for tool in ("curl", "nginx"):
        if shutil.which(tool) is None:
            print(f"needs {tool} (apt-get install -y {'curl' if tool == 'curl' else 'nginx-light'})")
            return 2
    size_mib = 64 if args.quick else args.size_mib
    # Enough bytes per phase (2 GiB, 1 GiB with --quick) that connection set-up does not dominate.
    total_mib = 1024 if args.quick else 2048
    counts = [int(c) for c in args.clients.split(",")]
    plan = [(n, max(1, total_mib // size_mib // n)) for n in counts]
    tmp = Path(tempfile.mkdtemp(prefix="bf-bench-http-"))
    try:
        tmp.chmod(0o755)
        root = tmp / "www"
        root.mkdir(mode=0o755)
        size = make_artifact(root, size_mib).stat().st_size
        print(f"artifact: {size_mib} MiB; client: curl (one process per client, keep-alive, to /dev/null)")
        medians = measure(tmp, root, size, plan, args.rounds)
        nginx, ours = medians["nginx"], medians["bootforge"]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"\n{'clients':>7} {'nginx MiB/s':>12} {'bootforge MiB/s':>16} {'ratio':>6} {'target':>7}")
    failed = 0
    for theirs, mine in zip(nginx, ours, strict=True):
        ratio = mine.mib_s / theirs.mib_s
        verdict = "PASS" if ratio >= TARGET else "MISS"
        print(f"{mine.clients:7} {theirs.mib_s:12.0f} {mine.mib_s:16.0f} {ratio:6.2f} {verdict:>7}")
        failed += theirs.errors + mine.errors
    if failed:
        print(f"{failed} transfers failed (wrong status or size)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
