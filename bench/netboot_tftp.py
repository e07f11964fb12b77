"""TFTP throughput: bootforge's server against tftpd-hpa, in network namespaces.

Three namespaces: a bridge, the servers (tftpd-hpa's `in.tftpd -L` on 10.214.0.1 and bootforge's
TftpServer, in its own process, on 10.214.0.3; both port 69, MTU 1500) and the load client
(10.214.0.2). Cases: file of 1 / 30 MiB x 1 / 16 / 64 concurrent clients x windowsize 1 / 8,
blksize 1468. Each case alternates between the two servers --repeat times (default 3, 3 s each)
and reports the median, so load from other jobs on this shared machine hits both alike.

Every client slot fetches the file again and again; throughput counts payload bytes received in
order (partial transfers included) over the measured time, and each completed transfer's CRC32
is checked against the file. The slots are spread over --client-procs processes (default 8)
that start at the same instant: one process holding every slot would answer in bursts and turn
a single-process server into a convoy, which independent firmware clients never do.

tftpd-hpa 5.2 does not implement RFC 7440: it leaves windowsize out of its OACK and runs
lockstep, which is exactly what firmware gets from it. The targets compare against that.

    .venv/bin/python bench/netboot_tftp.py                 # the full matrix, about 6 minutes
    .venv/bin/python bench/netboot_tftp.py --quick         # 1 MiB, 1 and 16 clients, 2 s runs
    .venv/bin/python bench/netboot_tftp.py --sizes 30 --concurrency 16 --windowsizes 1 --uvloop
    .venv/bin/python bench/netboot_tftp.py --bf-procs 2   # bootforge as 2 processes on port 69

--bf-procs N runs bootforge's TFTP as N processes sharing port 69 (SO_REUSEPORT, the product's
netboot.tftp_workers); its CPU is summed over them. --bf-dataplane native|python|auto (default
auto, the product's netboot.tftp_dataplane) picks who runs lockstep data phases: the C extension
(a thread per transfer) or the event loop; the header says which ran. At the end the bench
prints bootforge's own counters, whose `failed` is split into transfers the load client cut off
when a run ended and the rest.

Needs root, iproute2, taskset only with --server-cpus/--client-cpus, and Debian's tftpd-hpa (its
package may try to start a host service: install with /usr/sbin/policy-rc.d returning 101, or
stop and disable it at once). The load client is the small asyncio client below (curl has no
windowsize); it runs on uvloop when that is installed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import dataclasses
import json
import logging
import os
import pstats
import resource
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bootforge.lab.netns import Namespace, Topology, unique_prefix  # noqa: E402

SERVER_IPS = {"tftpd-hpa": "10.214.0.1", "bootforge": "10.214.0.3"}
CLIENT_IP = "10.214.0.2"
BLKSIZE = 1468
MiB = 1024 * 1024
TARGET_W1, TARGET_W8 = 1.0, 2.0


# -- load client ----------------------------------------------------------------------------------


@dataclass
class Stats:
    bytes: int = 0
    completed: int = 0
    failed: int = 0
    crc_mismatch: int = 0
    cut_off: int = 0  # fetches still running when the run ended (aborted with ERROR 0)
    windowsizes: set[int] = field(default_factory=set)


class Fetch:
    """One RRQ: ACKs as RFC 7440 says (last block of a window, or the last in-order block)."""

    def __init__(self, slot: Slot) -> None:
        self.slot = slot
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        self.sock.bind((slot.client.bind_ip, 0))
        self.tid: tuple[str, int] | None = None
        self.blksize, self.window = 512, 1
        self.expected, self.in_window, self.gap_acked = 1, 0, False
        self.crc, self.retries = 0, 0
        self.last_sent = slot.client.rrq
        self.last_activity = time.monotonic()
        self.done = False
        slot.client.loop.add_reader(self.sock.fileno(), self.on_readable)
        self.send(slot.client.rrq, slot.client.server)

    def send(self, data: bytes, to: tuple[str, int]) -> None:
        self.last_sent = data
        with contextlib.suppress(OSError):  # lost like on a wire; the idle check retries
            self.sock.sendto(data, to)

    def ack(self, block: int) -> None:
        assert self.tid is not None
        self.send(struct.pack("!HH", 4, block & 0xFFFF), self.tid)

    def on_readable(self) -> None:
        client = self.slot.client
        buf = client.buffer
        for _ in range(64):
            try:
                n, addr = self.sock.recvfrom_into(buf)
            except BlockingIOError:
                return
            self.last_activity = time.monotonic()
            self.retries = 0
            if self.tid is None:
                self.tid = addr
            elif addr != self.tid:
                continue
            opcode, block = struct.unpack_from("!HH", buf)
            if opcode == 3:
                self.on_data(block, n - 4)
            elif opcode == 6:
                self.on_oack(bytes(buf[2:n]))
            else:
                self.finish(ok=False)
            if self.done:
                return

    def on_oack(self, body: bytes) -> None:
        parts = body.rstrip(b"\0").split(b"\0")
        options = dict(zip(parts[::2], parts[1::2], strict=False))
        self.blksize = int(options.get(b"blksize", b"512"))
        self.window = int(options.get(b"windowsize", b"1"))
        self.slot.client.stats.windowsizes.add(self.window)
        self.ack(0)

    def on_data(self, block: int, length: int) -> None:
        if block != self.expected & 0xFFFF:
            if not self.gap_acked:  # one ACK per gap, not one per stray packet
                self.gap_acked, self.in_window = True, 0
                self.ack(self.expected - 1)
            return
        client = self.slot.client
        self.crc = zlib.crc32(client.view[4 : 4 + length], self.crc)
        client.stats.bytes += length
        self.expected += 1
        self.in_window += 1
        self.gap_acked = False
        if length < self.blksize:
            self.ack(block)
            self.finish(ok=True)
        elif self.in_window >= self.window:
            self.in_window = 0
            self.ack(block)

    def check_idle(self, now: float) -> None:
        if now - self.last_activity < 0.5:
            return
        self.retries += 1
        if self.retries > 10:
            self.finish(ok=False)
            return
        self.last_activity = now
        self.send(self.last_sent, self.tid or self.slot.client.server)

    def finish(self, *, ok: bool) -> None:
        if self.done:
            return
        self.done = True
        client = self.slot.client
        client.loop.remove_reader(self.sock.fileno())
        self.sock.close()
        if ok:
            client.stats.completed += 1
            client.stats.crc_mismatch += self.crc != client.expected_crc
        else:
            client.stats.failed += 1
        self.slot.next()

    def abort(self) -> None:
        if not self.done:  # its RRQ went out: the server has a transfer to give up on
            self.slot.client.stats.cut_off += 1
            if self.tid is not None:
                self.send(struct.pack("!HH", 5, 0) + b"bench over\0", self.tid)
        self.done = True
        self.slot.client.loop.remove_reader(self.sock.fileno())
        self.sock.close()


class Slot:
    """One simulated client: fetches the file again and again until the deadline."""

    def __init__(self, client: LoadClient) -> None:
        self.client = client
        self.fetch: Fetch | None = None

    def next(self) -> None:
        self.fetch = None
        if time.monotonic() < self.client.deadline:
            self.fetch = Fetch(self)


class LoadClient:
    def __init__(self, args: argparse.Namespace, expected_crc: int) -> None:
        self.loop = asyncio.get_running_loop()
        self.server = (args.server, 69)
        self.bind_ip = args.bind
        self.expected_crc = expected_crc
        self.buffer = bytearray(65536)
        self.view = memoryview(self.buffer)
        self.stats = Stats()
        self.seconds = args.seconds
        self.deadline = time.monotonic() + args.seconds
        options = [b"blksize", str(args.blksize).encode()]
        if args.windowsize > 1:
            options += [b"windowsize", str(args.windowsize).encode()]
        self.rrq = b"\0\x01" + b"\0".join([args.file.encode(), b"octet", *options]) + b"\0"
        self.slots = [Slot(self) for _ in range(args.concurrency)]

    @classmethod
    async def create_and_run(cls, args: argparse.Namespace, expected_crc: int) -> dict[str, Any]:
        return await cls(args, expected_crc).run(args.start_at)

    async def run(self, start_at: float) -> dict[str, Any]:
        await asyncio.sleep(max(0.0, start_at - time.time()))
        # CPU from here on only: start-up (imports, the file's CRC) is no per-packet cost.
        cpu_before = cpu_time()
        start = time.monotonic()
        self.deadline = start + self.seconds
        for slot in self.slots:
            slot.next()
        while (now := time.monotonic()) < self.deadline:
            for slot in self.slots:
                if slot.fetch is not None:
                    slot.fetch.check_idle(now)
            await asyncio.sleep(min(0.1, max(0.0, self.deadline - now)))
        elapsed = time.monotonic() - start
        for slot in self.slots:
            if slot.fetch is not None:
                slot.fetch.abort()
        s = self.stats
        return {
            "client_cpu": cpu_time() - cpu_before,
            "bytes": s.bytes,
            "seconds": elapsed,
            "completed": s.completed,
            "failed": s.failed,
            "crc_mismatch": s.crc_mismatch,
            "cut_off": s.cut_off,
            "windowsizes": sorted(s.windowsizes),
        }


def cpu_time() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_client(args: argparse.Namespace) -> None:
    # The client is the measuring instrument for both servers; uvloop (installed with
    # uvicorn[standard]) keeps it from being the bottleneck.
    expected_crc = zlib.crc32(Path(args.root, args.file).read_bytes())
    try:
        import uvloop
    except ImportError:
        result = asyncio.run(LoadClient.create_and_run(args, expected_crc))
    else:
        result = uvloop.run(LoadClient.create_and_run(args, expected_crc))
    print(json.dumps(result))


# -- bootforge server process ---------------------------------------------------------------------


async def serve_main(args: argparse.Namespace) -> None:
    from bootforge.netboot.tftp import FileSystemSource, TransferConfig
    from bootforge.servers.tftp import TftpServer
    from bootforge.servers.tftp_workers import TftpWorkers, WorkerSpec

    logging.basicConfig(level=logging.ERROR)  # the end of a case aborts transfers
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    config = TransferConfig(max_windowsize=64)
    profile = cProfile.Profile() if args.profile else None
    source_args = {"root": args.root}
    # Every load client here shares one address, where a fleet's machines have one each: the
    # per-address transfer bound (netboot.tftp_max_transfers_per_client, 16 by default) is set to
    # its largest allowed value, so the cases model N machines instead of throttling one address.
    per_client = 4096
    spec = WorkerSpec(args.address, 69, "bootforge.servers.tftp_workers:filesystem_source", source_args,
                      config, log_level=logging.ERROR, uvloop=args.uvloop,
                      dataplane=args.dataplane, max_transfers_per_client=per_client)  # fmt: skip
    reuse = args.procs > 1
    async with TftpServer(
        FileSystemSource(args.root),
        args.address,
        config=config,
        reuse_port=reuse,
        dataplane=args.dataplane,
        max_transfers_per_client=per_client,
    ) as server:
        workers = TftpWorkers(spec, args.procs - 1)
        if reuse:
            await workers.start()
        if profile is not None:
            profile.enable()
        await stop.wait()
        if profile is not None:
            profile.disable()
            pstats.Stats(profile, stream=sys.stderr).sort_stats("tottime").print_stats(25)
        await workers.aclose()
    counters = dataclasses.asdict(server.counters)
    for name, value in dataclasses.asdict(workers.counters).items():
        counters[name] += value
    print(json.dumps({"counters": counters}), file=sys.stderr)


# -- orchestration --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    size_mib: int
    concurrency: int
    windowsize: int


def wait_for_port(ns: Namespace, address: str, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        out = ns.run(["ss", "-Hlun", f"src {address}:69"], check=False).stdout
        if out.strip():
            return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {address}:69 in {ns.name}")


def start_server(kind: str, ns: Namespace, root: Path, args: argparse.Namespace) -> Server:
    address = SERVER_IPS[kind]
    if kind == "tftpd-hpa":
        argv = ["in.tftpd", "-L", "-s", str(root), "-a", f"{address}:69", "-u", "tftp"]
    else:
        argv = [sys.executable, __file__, "serve", "--root", str(root), "--address", address]
        argv += ["--uvloop"] if args.uvloop else []
        argv += ["--profile"] if args.profile else []
        argv += ["--procs", str(args.bf_procs), "--dataplane", args.bf_dataplane]
    # stderr to a file: bootforge's counters are read from it at the end
    err = tempfile.TemporaryFile("w+")  # noqa: SIM115 - closed by stop_server
    proc = ns.popen(pinned(args.server_cpus, argv), stderr=err)
    wait_for_port(ns, address)
    if kind == "bootforge":
        time.sleep(2.0 if args.bf_procs > 1 else 0.0)  # the workers' listeners join the first one
    return Server(kind, address, proc, err)


def stop_server(server: Server) -> dict[str, int]:
    """Stop it; bootforge's counters (all its processes summed), {} for tftpd-hpa."""
    server.proc.send_signal(signal.SIGTERM)
    try:
        server.proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        server.proc.kill()
        server.proc.wait()
    server.stderr.seek(0)
    counters: dict[str, int] = {}
    for line in server.stderr:
        if line.startswith('{"counters"'):
            counters = json.loads(line)["counters"]
        else:
            sys.stderr.write(line)
    server.stderr.close()
    return counters


@dataclass(frozen=True)
class Server:
    kind: str
    address: str
    proc: subprocess.Popen[Any]
    stderr: Any  # a temporary file


def cpu_seconds(pid: int) -> float:
    """utime + stime of the process, its reaped children and its live ones (bootforge's workers)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return 0.0
    own = sum(int(v) for v in fields[11:15]) / os.sysconf("SC_CLK_TCK")
    return own + sum(cpu_seconds(int(child)) for child in children)


def pinned(cpus: str | None, argv: list[str]) -> list[str]:
    return ["taskset", "-c", cpus, *argv] if cpus else argv


def run_case(
    ns: Namespace, root: Path, case: Case, args: argparse.Namespace, server: Server
) -> dict[str, Any]:
    """Run the load: `procs` client processes share the slots and start at the same instant."""
    procs = max(1, min(args.client_procs, case.concurrency))
    start_at = time.time() + 1.5  # room for the interpreters to start and CRC the file
    children = []
    for i in range(procs):
        slots = case.concurrency // procs + (1 if i < case.concurrency % procs else 0)
        argv = [sys.executable, __file__, "client", "--server", server.address]
        argv += ["--bind", CLIENT_IP, "--root", str(root), "--file", f"f{case.size_mib}.bin"]
        argv += ["--seconds", str(args.seconds), "--start-at", str(start_at)]
        argv += ["--concurrency", str(slots), "--windowsize", str(case.windowsize)]
        argv += ["--blksize", str(BLKSIZE)]
        children.append(ns.popen(pinned(args.client_cpus, argv), stdout=subprocess.PIPE))
    cpu_before = cpu_seconds(server.proc.pid)
    parts = []
    for child in children:
        out, _ = child.communicate(timeout=args.seconds + 60)
        parts.append(json.loads(out.decode().strip().splitlines()[-1]))
    result: dict[str, Any] = {
        key: sum(p[key] for p in parts)
        for key in ("bytes", "completed", "failed", "crc_mismatch", "cut_off", "client_cpu")
    }
    result["seconds"] = max(p["seconds"] for p in parts)
    result["windowsizes"] = sorted({w for p in parts for w in p["windowsizes"]})
    result["mib_s"] = result["bytes"] / MiB / result["seconds"]
    result["server_cpu"] = cpu_seconds(server.proc.pid) - cpu_before
    return result


def make_root(sizes: list[int]) -> Path:
    root = Path(tempfile.mkdtemp(prefix="bf-tftp-bench-"))
    root.chmod(0o755)  # in.tftpd drops to user tftp after chroot
    for mib in sizes:
        path = root / f"f{mib}.bin"
        path.write_bytes(os.urandom(mib * MiB))
        path.chmod(0o644)
    return root


def describe(server: Server, case: Case, res: dict[str, Any]) -> str:
    # in.tftpd's per-transfer children are never reaped into its cutime: its CPU is unknown.
    cpu = "n/a" if server.kind == "tftpd-hpa" else f"{res['server_cpu'] / res['seconds']:.0%}"
    return (
        f"  {server.kind:10} {case.size_mib:3} MiB x{case.concurrency:<3} w{case.windowsize:<2}"
        f" {res['mib_s']:8.1f} MiB/s  cpu server {cpu:>4} client "
        f"{res['client_cpu'] / res['seconds']:4.0%}  done={res['completed']} "
        f"failed={res['failed']} crc_bad={res['crc_mismatch']} windows={res['windowsizes']}"
    )


def measure(args: argparse.Namespace, cases: list[Case], root: Path) -> dict[tuple[str, Case], Any]:
    """Both servers run side by side; each case alternates between them --repeat times and the
    median counts, so load from other jobs on the machine hits both alike."""
    runs: dict[tuple[str, Case], list[dict[str, Any]]] = {}
    with Topology(unique_prefix("bfbench")) as topo:
        bridge = topo.bridge(topo.namespace("sw"), "br0")
        server_ns, client_ns = topo.namespace("srv"), topo.namespace("cli")
        topo.attach(bridge, server_ns, "eth0", f"{SERVER_IPS['tftpd-hpa']}/24")
        server_ns.ip("addr", "add", f"{SERVER_IPS['bootforge']}/24", "dev", "eth0")
        topo.attach(bridge, client_ns, "eth0", f"{CLIENT_IP}/24")
        servers = [start_server(kind, server_ns, root, args) for kind in args.servers]
        try:
            for case in cases:
                for rep in range(args.repeat):
                    for server in servers[:: 1 if rep % 2 == 0 else -1]:
                        res = run_case(client_ns, root, case, args, server)
                        runs.setdefault((server.kind, case), []).append(res)
                        print(describe(server, case, res), flush=True)
        finally:
            for server in servers:
                print_counters(server.kind, stop_server(server), runs)
    return {key: median_run(values) for key, values in runs.items()}


def print_counters(kind: str, counters: dict[str, int], runs: dict[tuple[str, Case], Any]) -> None:
    """The server's own view. Its `failed` includes every transfer the load client cut off when a
    run ended (ERROR 0 "bench over", or silence): those are no failures, so they are told apart."""
    if not counters:
        return
    cut = sum(r["cut_off"] for (k, _), values in runs.items() if k == kind for r in values)
    print(
        f"{kind} server counters: requests {counters['requests']}, completed {counters['completed']}, "
        f"failed {counters['failed']} = {cut} cut off at the end of runs + "
        f"{counters['failed'] - cut} other, native data phases {counters['native']}, "
        f"retransmits {counters['retransmits']}, "
        f"overloaded {counters['overloaded']}, send errors {counters['send_errors']}"
    )


def median_run(values: list[dict[str, Any]]) -> dict[str, Any]:
    ordered = sorted(values, key=lambda r: float(r["mib_s"]))
    result = dict(ordered[len(ordered) // 2])
    result["failed"] = sum(r["failed"] for r in values)
    result["crc_mismatch"] = sum(r["crc_mismatch"] for r in values)
    result["cut_off"] = sum(r["cut_off"] for r in values)
    return result


def report(results: dict[tuple[str, Case], Any], cases: list[Case]) -> bool:
    ok = True
    print("\nsize  clients  hpa w1  bf w1  ratio   hpa w8  bf w8  ratio(bf w8 / hpa w1)")
    for case in (c for c in cases if c.windowsize == 1):
        w8 = Case(case.size_mib, case.concurrency, 8)
        hpa1 = results.get(("tftpd-hpa", case), {}).get("mib_s")
        bf1 = results.get(("bootforge", case), {}).get("mib_s")
        hpa8 = results.get(("tftpd-hpa", w8), {}).get("mib_s")
        bf8 = results.get(("bootforge", w8), {}).get("mib_s")
        r1 = bf1 / hpa1 if bf1 and hpa1 else None
        r8 = bf8 / hpa1 if bf8 and hpa1 else None
        ok &= (r1 is None or r1 >= TARGET_W1) and (r8 is None or r8 >= TARGET_W8)
        print(
            f"{case.size_mib:3} MiB  {case.concurrency:5}  {fmt(hpa1)}  {fmt(bf1)}  "
            f"{fmt(r1, 'x')}  {fmt(hpa8)}  {fmt(bf8)}  {fmt(r8, 'x')}"
        )
    bad = [k for k, v in results.items() if v["crc_mismatch"] or v["failed"]]
    if bad:
        ok = False
        print("failed or corrupt transfers in:", ", ".join(f"{k[0]} {k[1]}" for k in bad))
    print(
        f"targets: bf w1 >= {TARGET_W1}x tftpd-hpa, bf w8 >= {TARGET_W8}x tftpd-hpa: "
        + ("PASS" if ok else "MISS")
    )
    return ok


def resolve_dataplane(choice: str) -> str:
    """What TftpServer(dataplane=choice) runs; the server processes use this venv too."""
    if choice != "auto":
        return choice
    try:
        import bootforge.servers._tftp_dataplane  # noqa: F401
    except ImportError as exc:
        return f"python (auto: the native one is not built: {exc})"
    return "native (auto)"


def fmt(value: float | None, unit: str = "") -> str:
    return "     -" if value is None else f"{value:6.1f}{unit}"


def orchestrate(args: argparse.Namespace) -> int:
    if os.geteuid() != 0:
        print("needs root (network namespaces)", file=sys.stderr)
        return 2
    if "tftpd-hpa" in args.servers and shutil.which("in.tftpd") is None:
        print("needs in.tftpd (Debian tftpd-hpa)", file=sys.stderr)
        return 2
    sizes = args.sizes or ([1] if args.quick else [1, 30])
    concurrency = args.concurrency or ([1, 16] if args.quick else [1, 16, 64])
    windows = args.windowsizes or [1, 8]
    cases = [Case(s, c, w) for s in sizes for c in concurrency for w in windows]
    root = make_root(sizes)
    try:
        print(
            f"TFTP bench: blksize {BLKSIZE}, {args.seconds:g} s per case, servers "
            f"{', '.join(args.servers)}, bootforge loop {'uvloop' if args.uvloop else 'asyncio'}, "
            f"{args.bf_procs} bootforge process(es), bootforge data plane "
            f"{resolve_dataplane(args.bf_dataplane)}"
        )
        results = measure(args, cases, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0 if report(results, cases) else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    sub = parser.add_subparsers(dest="command")
    serve = sub.add_parser("serve", help="run bootforge's TFTP server (inside a namespace)")
    serve.add_argument("--root", required=True)
    serve.add_argument("--address", required=True)
    serve.add_argument("--uvloop", action="store_true")
    serve.add_argument("--profile", action="store_true", help="cProfile to stderr at exit")
    serve.add_argument("--procs", type=int, default=1, help="TFTP processes sharing port 69")
    serve.add_argument("--dataplane", choices=["auto", "native", "python"], default="auto")
    client = sub.add_parser("client", help="run the load client (inside a namespace)")
    client.add_argument("--server", required=True)
    client.add_argument("--bind", default="0.0.0.0")
    client.add_argument("--root", required=True)
    client.add_argument("--file", required=True)
    client.add_argument("--seconds", type=float, default=4.0)
    client.add_argument("--concurrency", type=int, default=1)
    client.add_argument("--windowsize", type=int, default=1)
    client.add_argument("--blksize", type=int, default=BLKSIZE)
    client.add_argument("--start-at", type=float, default=0.0, help="time.time() to start at")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--sizes", type=int, nargs="+", help="file sizes in MiB (default 1 30)")
    parser.add_argument("--concurrency", type=int, nargs="+", help="default 1 16 64")
    parser.add_argument("--windowsizes", type=int, nargs="+", help="default 1 8")
    parser.add_argument("--seconds", type=float, default=3.0, help="per run")
    parser.add_argument("--repeat", type=int, default=3, help="runs per case and server")
    parser.add_argument("--uvloop", action="store_true", help="run bootforge's server on uvloop")
    parser.add_argument("--profile", action="store_true", help="profile bootforge's server")
    parser.add_argument(
        "--bf-procs", type=int, default=1, help="bootforge TFTP processes (SO_REUSEPORT workers), default 1"
    )
    parser.add_argument(
        "--bf-dataplane",
        choices=["auto", "native", "python"],
        default="auto",
        help="who runs bootforge's lockstep data phases (netboot.tftp_dataplane), default auto",
    )
    parser.add_argument("--server-cpus", help="taskset CPU list for both servers, e.g. 0")
    parser.add_argument("--client-cpus", help="taskset CPU list for the load client, e.g. 1")
    parser.add_argument(
        "--client-procs",
        type=int,
        default=8,
        help="load client processes per case (slots are spread over them; default 8)",
    )
    parser.add_argument(
        "--servers", nargs="+", default=["tftpd-hpa", "bootforge"], choices=["tftpd-hpa", "bootforge"]
    )
    return parser


def main() -> int:
    args = build_parser().parse_args()
    if args.command == "serve":
        if args.uvloop:
            import uvloop

            uvloop.run(serve_main(args))
        else:
            asyncio.run(serve_main(args))
        return 0
    if args.command == "client":
        run_client(args)
        return 0
    if args.quick:
        args.seconds = min(args.seconds, 2.0)
    return orchestrate(args)


if __name__ == "__main__":
    sys.exit(main())
