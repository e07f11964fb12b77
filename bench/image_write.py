"""Image write throughput: the deploy agent's write_image against dd, on 127.0.0.1.

(a) raw: an image of random (incompressible) bytes, --size-mib (default 1024). The agent streams
it over HTTP from bootforge's HttpBootServer (its own process, zero-copy sendfile) and hashes it
(sha256) on the way, once as the raw file ("agent") and once as its Android sparse stream, made by
bootforge's encoder, which is what the catalogue now serves for a raw import ("agent-simg"); dd
copies the local file, `dd if=image of=target bs=<the agent's CHUNK>
oflag=direct conv=fsync`. Both write onto the same kind of target, fresh for every run: a loop
device with direct I/O over a new sparse file (as root, when losetup works; --loop-page-cache for
one without direct I/O), else a new sparse file (--target file). The image is read once before, so
both read it from the page cache. Writers take turns for --rounds rounds, in a rotating order;
the medians are reported: throughput, and CPU seconds per GiB (getrusage of the child: the
agent's, zstd's; the HTTP server's from /proc, apart), which is the robust number on a shared
machine. --baseline-agent DIR adds another copy of the agent
(e.g. the previous version of bootforge/agent) as a third writer, for before/after numbers
measured under the same load. Target: agent >= 0.9x dd.

(b) sparse: a --sparse-mib (default 4096) image holding --data-mib (default 300) of random data
in 1 MiB chunks at random places, the rest zeros, and the same data packed into a data-only
image. Each is served in four ways: zstd-compressed (zstd -T0), raw, and as its sparse stream
(bootforge's encoder) plain (simg) and zstd-compressed (simg+zstd: what the catalogue serves for a
zstd or qcow2 import); the agent writes each onto a fresh target. For each way, time(sparse) /
time(data only) is printed: a writer whose time follows the data takes about as long for both (a
ratio near 1); one that writes every byte takes sparse/data times longer (13.7x for 4096/300).

The agent runs as the ramdisk runs it: bootforge/agent copied as the top-level package
`bootforge_agent`, in a child process (its CPU, zstd's included, is reported per run). Every run
has a deadline; temp files and loop devices are removed at the end, also on failure.

    .venv/bin/python bench/image_write.py             # 1 GiB raw x 3 rounds; 4 GiB / 300 MiB sparse
    .venv/bin/python bench/image_write.py --quick     # 128 MiB raw x 1; 512 / 40 MiB sparse
    .venv/bin/python bench/image_write.py --target file --size-mib 2048
    .venv/bin/python bench/image_write.py --phases raw --rounds 5 --baseline-agent /tmp/agent_before

Needs dd, zstd (Debian zstd) and, for loop targets, root and losetup. The machine is shared: the
load average is printed with each phase.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import random
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from netboot_http import BOOTFORGE_CHILD as SERVER_CHILD  # noqa: E402 (bootforge's HTTP server, alone)

from bootforge.agent.write import CHUNK  # noqa: E402 (the repo is put on the path first)
from bootforge.images.sparse import write_simg  # noqa: E402

MiB = 1 << 20
# By default the loop device reads and writes its backing file with direct I/O, as a disk would:
# with the page cache in between (--loop-page-cache), both writers' final fsync pays for writing
# back a cached copy of everything they wrote (~0.5 s per GiB here), which no real disk does.
LOOP_DIRECT_IO = ["--direct-io=on"]
GiB = 1 << 30
TARGET_RATIO = 0.9
RUN_TIMEOUT_S = 600.0
READY_TIMEOUT_S = 20.0


AGENT_CHILD = """\
import json, pathlib, sys, time
sys.path.insert(0, {pkg!r})
from bootforge_agent import write
from bootforge_agent.common import Context
args = json.loads(sys.argv[1])
started = time.monotonic()
result = write.run(args, Context(disks=[pathlib.Path(sys.argv[2])]), lambda done, total, message: None)
result["wall"] = time.monotonic() - started
print(json.dumps(result), flush=True)
"""


@dataclass
class Run:
    seconds: float
    cpu: float  # user + system CPU seconds of the writer (and its children: zstd)
    written: int = 0
    zeroed: int = 0
    server_cpu: float = 0.0  # the HTTP server's CPU seconds during the run
    load: float = 0.0  # the 1-minute load average when the run ended


SERVER_PID = 0  # set once the HTTP server runs; its CPU is counted per agent run
NICE: list[str] = []  # `nice -n N` before every writer and the server, with --nice N


def process_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"load {one:.1f} (5 min {five:.1f}) on {os.cpu_count()} cores"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# -- images -------------------------------------------------------------------------------------


def sha256_of(path: Path) -> str:
    """Also warms the page cache, so that the server and dd both read the image from memory."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(4 * MiB):
            h.update(block)
    return h.hexdigest()


def random_image(path: Path, mib: int, seed: int) -> Path:
    rng = random.Random(seed)
    with open(path, "wb") as f:
        for _ in range(mib):
            f.write(rng.randbytes(MiB))
    return path


def sparse_images(root: Path, total_mib: int, data_mib: int, seed: int) -> tuple[Path, Path]:
    """(the sparse image, the same data packed): data in 1 MiB chunks at random MiB offsets."""
    rng = random.Random(seed)
    places = sorted(rng.sample(range(total_mib), data_mib))
    sparse, packed = root / "sparse.img", root / "packed.img"
    with open(sparse, "wb") as s, open(packed, "wb") as p:
        s.truncate(total_mib * MiB)
        for place in places:
            chunk = rng.randbytes(MiB)
            s.seek(place * MiB)
            s.write(chunk)
            p.write(chunk)
    return sparse, packed


def compress(path: Path) -> Path:
    out = path.with_name(path.name + ".zst")
    subprocess.run(["zstd", "-q", "-f", "-T0", str(path), "-o", str(out)], check=True, timeout=RUN_TIMEOUT_S)
    return out


def sparse_stream(path: Path, compressed: bool) -> Path:
    """The image's Android sparse stream, as bootforge's store makes it (simg, or simg.zst)."""
    out = path.with_name(path.name + (".simg.zst" if compressed else ".simg"))
    write_simg(path, out, threading.Event(), compress=compressed)
    return out


def image_spec(url: str, served: Path, virtual_size: int, fmt: str) -> dict[str, Any]:
    return {
        "url": url,
        "format": fmt,
        "size": served.stat().st_size,
        "virtual_size": virtual_size,
        "checksum_algo": "sha256",
        "checksum": sha256_of(served),
    }


# -- targets ------------------------------------------------------------------------------------


class Targets:
    """Fresh write targets: a new sparse file, behind a loop device when `loop` is set. Everything
    made is removed by cleanup(), which main() runs on every exit path."""

    def __init__(self, directory: Path, loop: bool, page_cache: bool = False) -> None:
        self.directory, self.loop = directory, loop
        self.loop_options = [] if page_cache else LOOP_DIRECT_IO
        self.devices: list[str] = []

    @contextlib.contextmanager
    def fresh(self, size: int) -> Iterator[Path]:
        backing = self.directory / "target.img"
        with open(backing, "wb") as f:
            f.truncate(size)
        device = None
        try:
            if self.loop:
                made = subprocess.run(
                    ["losetup", "-f", "--show", *self.loop_options, str(backing)],
                    capture_output=True,
                    text=True,
                    check=True,
                    timeout=30,
                )
                device = made.stdout.strip()
                self.devices.append(device)
            yield Path(device) if device else backing
        finally:
            if device:
                subprocess.run(["losetup", "-d", device], check=False, timeout=30)
                self.devices.remove(device)
            backing.unlink(missing_ok=True)
            # Let writeback of this run finish before the next one starts.
            os.sync()

    def cleanup(self) -> None:
        for device in list(self.devices):
            subprocess.run(["losetup", "-d", device], check=False, timeout=30)
        self.devices.clear()


def loop_usable(directory: Path) -> bool:
    if os.geteuid() != 0 or shutil.which("losetup") is None:
        return False
    try:
        with Targets(directory, loop=True).fresh(MiB):
            return True
    except (subprocess.CalledProcessError, OSError):
        return False


# -- writers ------------------------------------------------------------------------------------


def child_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_agent(pkg: Path, spec: dict[str, Any], target: Path) -> Run:
    args = json.dumps({"image": spec, "root_device_hints": {}, "configdrive": None})
    cpu, server = child_cpu(), process_cpu(SERVER_PID)
    done = subprocess.run(
        [*NICE, sys.executable, "-c", AGENT_CHILD.format(pkg=str(pkg)), args, str(target)],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
    )
    if done.returncode != 0:
        raise RuntimeError(f"agent failed: {done.stderr.strip().splitlines()[-1:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if result["checksum"] != spec["checksum"]:
        raise RuntimeError("agent reported a different checksum")
    server = process_cpu(SERVER_PID) - server
    return Run(
        result["wall"],
        child_cpu() - cpu,
        result["bytes_written"],
        result["bytes_zeroed"],
        server,
        os.getloadavg()[0],
    )


def run_dd(image: Path, target: Path) -> Run:
    cpu, started = child_cpu(), time.monotonic()
    subprocess.run(
        [
            *NICE,
            "dd",
            f"if={image}",
            f"of={target}",
            f"bs={CHUNK // MiB}M",
            "oflag=direct",
            "conv=fsync,notrunc",
            "status=none",
        ],
        check=True,
        timeout=RUN_TIMEOUT_S,
    )
    seconds = time.monotonic() - started
    return Run(seconds, child_cpu() - cpu, image.stat().st_size, load=os.getloadavg()[0])


# -- servers ------------------------------------------------------------------------------------


def start_server(root: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    proc = subprocess.Popen(
        [*NICE, sys.executable, "-c", SERVER_CHILD.format(repo=str(REPO), root=str(root), port=port)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"HTTP server exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return proc, port
        time.sleep(0.05)
    stop(proc)
    raise RuntimeError("HTTP server did not start listening")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# -- phases -------------------------------------------------------------------------------------


def mib_s(nbytes: int, seconds: float) -> float:
    return nbytes / MiB / seconds


def per_gib(cpu: float, nbytes: int) -> float:
    return cpu / (nbytes / GiB)


def phase_raw(
    root: Path, base: str, agents: dict[str, Path], targets: Targets, mib: int, rounds: int
) -> bool:
    image = random_image(root / "raw.img", mib, seed=1)
    size = image.stat().st_size
    spec = image_spec(f"{base}/raw.img", image, size, "raw")
    simg = sparse_stream(image, compressed=False)
    simg_spec = image_spec(f"{base}/{simg.name}", simg, size, "simg")
    print(f"\n(a) raw image, {mib} MiB of random bytes, dd bs={CHUNK // MiB}M; {load()}")
    # name -> (agent package, spec); the baseline agent may not know sparse streams.
    writers: dict[str, tuple[Path, dict[str, Any]] | None] = {"agent-simg": (agents["agent"], simg_spec)}
    writers.update({who: (pkg, spec) for who, pkg in agents.items()})
    writers["dd"] = None
    names = list(writers)
    runs: dict[str, list[Run]] = {who: [] for who in names}
    for n in range(rounds):
        # Rotate who goes first, so that a noisy neighbour does not always hit the same one.
        for who in names[n % len(names) :] + names[: n % len(names)]:
            writer = writers[who]
            with targets.fresh(size) as target:
                run = run_dd(image, target) if writer is None else run_agent(writer[0], writer[1], target)
            runs[who].append(run)
            server = f" + server {per_gib(run.server_cpu, size):.2f}" if who != "dd" else ""
            print(
                f"  round {n + 1} {who:10}: {mib_s(size, run.seconds):6.0f} MiB/s "
                f"({run.seconds:5.2f} s), CPU-s/GiB {per_gib(run.cpu, size):.2f}{server}; "
                f"load {run.load:.1f}",
                flush=True,
            )
    return report_raw(runs, size, rounds)


def report_raw(runs: dict[str, list[Run]], size: int, rounds: int) -> bool:
    print(f"  medians of {rounds} round(s):")
    speed: dict[str, float] = {}
    for who in runs:
        speed[who] = mib_s(size, statistics.median(r.seconds for r in runs[who]))
        cpu = per_gib(statistics.median(r.cpu for r in runs[who]), size)
        served = statistics.median(r.server_cpu for r in runs[who])
        extra = f" + HTTP server {per_gib(served, size):.2f}" if who != "dd" else ""
        print(f"    {who:10} {speed[who]:6.0f} MiB/s, CPU-s/GiB {cpu:.2f}{extra}")
    loads = [r.load for rs in runs.values() for r in rs]
    ok = True
    for who in ("agent", "agent-simg"):
        ratio = speed[who] / speed["dd"]
        ok = ok and ratio >= TARGET_RATIO
        # The same round's runs follow each other: their ratio cancels the slow drift of this
        # shared machine's disk speed (dd alone spans 870-1,540 MiB/s over minutes).
        paired = [d.seconds / a.seconds for a, d in zip(runs[who], runs["dd"], strict=True)]
        print(
            f"  {who} / dd throughput {ratio:.2f}x (target >= {TARGET_RATIO}x: "
            f"{'PASS' if ratio >= TARGET_RATIO else 'MISS'}); within each round: median "
            f"{statistics.median(paired):.2f}x, {min(paired):.2f}x-{max(paired):.2f}x"
        )
    print(f"  load during the runs {min(loads):.1f}-{max(loads):.1f} on {os.cpu_count()} cores")
    for who in runs:
        if who not in ("agent", "agent-simg", "dd"):
            print(f"  agent / {who} throughput {speed['agent'] / speed[who]:.2f}x")
    return ok


def phase_sparse(
    root: Path, base: str, agents: dict[str, Path], targets: Targets, total_mib: int, data_mib: int
) -> None:
    sparse, packed = sparse_images(root, total_mib, data_mib, seed=2)
    # way -> (how the image is served, the agent's format)
    ways = {
        "zstd": (compress, "zstd"),
        "raw": (lambda path: path, "raw"),
        "simg": (lambda path: sparse_stream(path, compressed=False), "simg"),
        "simg+zstd": (lambda path: sparse_stream(path, compressed=True), "simg+zstd"),
    }
    served = {(way, name): make(image) for way, (make, _) in ways.items() for name, image in
              (("sparse", sparse), ("packed", packed))}  # fmt: skip
    sizes = ", ".join(f"{way} {served[way, 'sparse'].stat().st_size / MiB:.0f}" for way in ways)
    print(
        f"\n(b) sparse image: {total_mib} MiB holding {data_mib} MiB of data (served MiB: {sizes}) "
        f"vs the data alone; {load()}"
    )
    for who, pkg in agents.items():
        for way, (_, fmt) in ways.items():
            if who != "agent" and fmt.startswith("simg"):
                continue  # a baseline agent may not know sparse streams
            results: dict[str, Run] = {}
            for name, raw in (("sparse", sparse), ("packed", packed)):
                image = served[way, name]
                spec = image_spec(f"{base}/{image.name}", image, raw.stat().st_size, fmt)
                with targets.fresh(raw.stat().st_size) as target:
                    results[name] = run = run_agent(pkg, spec, target)
                print(
                    f"  {who:6} {name:6} ({fmt:9}): {run.seconds:6.2f} s, "
                    f"CPU-s {run.cpu:5.2f} + server {run.server_cpu:4.2f}, "
                    f"written {run.written / MiB:6.0f} MiB, zeroed {run.zeroed / MiB:6.0f} MiB; "
                    f"load {run.load:.1f}",
                    flush=True,
                )
            holey, dense = results["sparse"], results["packed"]
            print(
                f"  {who} {fmt}: time(sparse) / time(data only) = {holey.seconds / dense.seconds:.2f} "
                f"(a writer of every byte: {total_mib / data_mib:.1f})",
                flush=True,
            )


def agent_package(source: Path, pkg: Path) -> Path:
    """The agent's sources copied as top-level `bootforge_agent`, the way the ramdisk ships it."""
    shutil.copytree(source, pkg / "bootforge_agent", ignore=shutil.ignore_patterns("__pycache__"))
    return pkg


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size-mib", type=int, default=1024, help="raw image size (a)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of every writer in (a)")
    parser.add_argument("--sparse-mib", type=int, default=4096, help="sparse image size (b)")
    parser.add_argument("--data-mib", type=int, default=300, help="data in the sparse image (b)")
    parser.add_argument("--target", choices=("auto", "loop", "file"), default="auto")
    parser.add_argument(
        "--loop-page-cache",
        action="store_true",
        help="loop devices without direct I/O: their backing file is cached and written back on fsync",
    )
    parser.add_argument(
        "--dir", type=Path, default=None, help="where the images and targets go (default: a temp dir)"
    )
    parser.add_argument("--phases", choices=("raw", "sparse", "both"), default="both")
    parser.add_argument(
        "--baseline-agent",
        type=Path,
        default=None,
        help="another bootforge/agent directory, run beside the agent (before/after numbers)",
    )
    parser.add_argument(
        "--nice",
        type=int,
        default=0,
        help="run the writers and the HTTP server at this niceness (e.g. -10, as root: an "
        "estimate of an idle machine's numbers; it takes CPU from the machine's other jobs)",
    )
    parser.add_argument("--quick", action="store_true", help="128 MiB x 1 round; 512 MiB holding 40 MiB")
    args = parser.parse_args()
    if args.quick:
        args.size_mib, args.rounds, args.sparse_mib, args.data_mib = 128, 1, 512, 40
    return args


def main() -> int:
    args = parse_args()
    for tool, package in (("dd", "coreutils"), ("zstd", "zstd")):
        if shutil.which(tool) is None:
            print(f"needs {tool} (apt-get install -y {package})")
            return 2
    global NICE
    NICE = ["nice", "-n", str(args.nice)] if args.nice else []
    tmp = Path(tempfile.mkdtemp(prefix="bf-bench-write-", dir=args.dir))
    root = tmp / "www"
    root.mkdir()
    loop = args.target == "loop" or (args.target == "auto" and loop_usable(tmp))
    if args.target == "loop" and not loop_usable(tmp):
        print("needs root and a free loop device for --target loop")
        return 2
    targets = Targets(tmp, loop, args.loop_page_cache)
    server = None
    try:
        server, port = start_server(root)
        global SERVER_PID
        SERVER_PID = server.pid
        base = f"http://127.0.0.1:{port}"
        pkg = agent_package(REPO / "bootforge" / "agent", tmp / "pkg")
        agents = {"agent": pkg}
        if args.baseline_agent is not None:
            agents["before"] = agent_package(args.baseline_agent, tmp / "pkg-before")
        print(f"target: {'a loop device over ' if loop else ''}a fresh sparse file in {tmp}; {load()}")
        if args.nice:
            print(f"writers and the HTTP server run at niceness {args.nice}")
        ok = True
        if args.phases in ("raw", "both"):
            ok = phase_raw(root, base, agents, targets, args.size_mib, args.rounds)
        if args.phases in ("sparse", "both"):
            phase_sparse(root, base, agents, targets, args.sparse_mib, args.data_mib)
    finally:
        if server is not None:
            stop(server)
        targets.cleanup()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
