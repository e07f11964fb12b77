"""The burnin command: prove the hardware with stress-ng (CPU), memtester (memory), fio (disks), iperf3.

The agent measures and reports; the conductor judges (bootforge/drivers/burnin.py holds the thresholds),
so a ramdisk never needs to know an operator's limits and every number reaches the node, pass or fail.
A tool that fails to run, or outlives its time limit (it is killed with its whole process group), fails
the command; results that merely miss a threshold do not.

The tools are Debian's, put into the ramdisk only by `bootforge ramdisk build --with burn-in`: without
them the command says so instead of failing obscurely.

What the disk burn-in writes: fio's sequential and random write jobs write over the first `size_mib` MiB
of every disk it tests (direct I/O, random data), so it runs in cleaning only, and anything on those
disks is gone. Automated cleaning runs it before the metadata erase; a manual clean should list
erase_devices_metadata after it.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from . import log
from .common import CommandError, Context, Progress
from .disks import find_disks

__all__ = ["TOOLS", "available_tools", "run"]

# kind -> the program it runs; `available_tools` reports which of them this ramdisk has.
TOOLS = {
    "cpu": "stress-ng",
    "memory": "memtester",
    "disk": "fio",
    "network": "iperf3",
    "network_serve": "iperf3",
}
BUILD_HINT = "build it with `bootforge ramdisk build --with burn-in`"
# What a tool gets beyond its own duration before it is killed: start-up, and fio's file layout.
GRACE_S = 60.0
MAX_SECONDS = 24 * 3600
FIO_JOBS = {
    # name: (fio rw, block size, queue depth)
    "seqread_1m": ("read", "1M", 16),
    "seqwrite_1m": ("write", "1M", 16),
    "randread_4k": ("randread", "4k", 32),
    "randwrite_4k": ("randwrite", "4k", 32),
}
OUTPUT_LIMIT = 4 << 20  # bytes of a tool's output kept for parsing
CONNECT_WAIT_S = 30.0  # how long a client retries a partner's server that does not listen yet


def available_tools() -> dict[str, bool]:
    return {tool: shutil.which(tool) is not None for tool in TOOLS.values()}


def run(args: Mapping[str, Any], ctx: Context, progress: Progress) -> dict[str, Any]:
    kind = args.get("kind")
    if kind not in RUNNERS:
        raise CommandError(f"unknown burn-in kind {kind!r} (kinds: {', '.join(RUNNERS)})")
    tool = TOOLS[kind]
    if shutil.which(tool) is None:
        raise CommandError(f"ramdisk has no {tool}: {BUILD_HINT}")
    started = time.monotonic()
    result = RUNNERS[kind](args, ctx, progress)
    return {
        "kind": kind,
        "tools": available_tools(),
        "seconds": round(time.monotonic() - started, 3),
        **result,
    }


# --- running a tool --------------------------------------------------------------------------------


def run_tool(
    argv: list[str], timeout: float, merge_stderr: bool = False, timed_out: str | None = None
) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of `argv`, killed with its process group after `timeout` seconds.
    `merge_stderr`: stderr goes into stdout, in order (memtester prints a test's name on stdout and its
    FAILURE on stderr). `timed_out`: the error when the time limit is reached, if not the default.

    A new session, so stress-ng's and fio's worker processes die with it: killing only the parent
    would leave the workers loading the machine and holding the pipes open.
    """
    log(f"running {' '.join(argv)} (killed after {timeout:.0f} s)")
    try:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT if merge_stderr else subprocess.PIPE,
            start_new_session=True,
        )
    except OSError as exc:
        raise CommandError(f"cannot run {argv[0]}: {exc.strerror}") from exc
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        raise CommandError(
            timed_out or f"{argv[0]} did not finish within {timeout:.0f} s and was killed"
        ) from None
    except BaseException:
        _kill_group(proc)
        raise
    return proc.returncode, _text(out), _text(err or b"")


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()


def _text(data: bytes) -> str:
    return data[-OUTPUT_LIMIT:].decode(errors="replace")


def _tail(text: str, limit: int = 300) -> str:
    return " ".join(text.split())[-limit:]


def _int_arg(args: Mapping[str, Any], name: str, default: int, low: int, high: int) -> int:
    value = args.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise CommandError(f"burn-in {name} must be an integer from {low} to {high}, not {value!r}")
    return value


# --- CPU: stress-ng --------------------------------------------------------------------------------


def _cpu(args: Mapping[str, Any], ctx: Context, progress: Progress) -> dict[str, Any]:
    seconds = _int_arg(args, "seconds", 60, 1, MAX_SECONDS)
    cpus = _int_arg(args, "cpus", 0, 0, 4096)  # 0: one worker per online CPU
    method = args.get("method") or "matrixprod"
    if not isinstance(method, str) or not re.fullmatch(r"[a-z0-9_-]{1,32}", method):
        raise CommandError(f"burn-in method must be a stress-ng CPU method name, not {method!r}")
    progress(0, seconds, f"stress-ng --cpu {cpus or 'all'} ({method}) for {seconds} s")
    with tempfile.TemporaryDirectory(prefix="burnin-") as tmp:
        report = Path(tmp) / "metrics.yaml"
        argv = [
            "stress-ng", "--cpu", str(cpus), "--cpu-method", method, "--timeout", f"{seconds}s",
            "--metrics-brief", "--yaml", str(report),
        ]  # fmt: skip
        status, out, err = run_tool(argv, seconds + GRACE_S)
        yaml = report.read_text(errors="replace") if report.is_file() else ""
    if status != 0:
        raise CommandError(f"stress-ng exited with status {status}: {_tail(err or out)}")
    metrics = parse_stress_ng(yaml or err + out)
    metrics.update(cpus=cpus or os.cpu_count() or 0, method=method, duration_s=seconds)
    return {"cpu": metrics}


def parse_stress_ng(text: str, stressor: str = "cpu") -> dict[str, Any]:
    """The `stressor`'s metrics from stress-ng's --yaml report (or, failing that, its metrc lines).

    {"tool": "stress-ng 0.15.06", "bogo_ops": int, "bogo_ops_per_s": float (real time),
    "bogo_ops_per_s_cpu_time": float (usr+sys time)}.
    """
    version = re.search(r"stress-ng-version:\s*(\S+)", text)
    fields: dict[str, str] = {}
    lines = iter(text.splitlines())
    for line in lines:
        if re.fullmatch(rf"\s*-\s*stressor:\s*{re.escape(stressor)}\s*", line):
            for item in lines:
                m = re.fullmatch(r"\s+([a-z-]+):\s*(\S+)\s*", item)
                if m is None:
                    break
                fields[m.group(1)] = m.group(2)
            break
    if fields:
        try:
            return {
                "tool": f"stress-ng {version.group(1) if version else '?'}",
                "bogo_ops": int(fields["bogo-ops"]),
                "bogo_ops_per_s": float(fields["bogo-ops-per-second-real-time"]),
                "bogo_ops_per_s_cpu_time": float(fields["bogo-ops-per-second-usr-sys-time"]),
            }
        except (KeyError, ValueError):
            pass
    # stress-ng: metrc: [pid] cpu  7927  3.00  2.96  0.00  2640.69  2670.01
    metrc = re.search(
        rf"metrc:\s*\[\d+\]\s+{re.escape(stressor)}\s+(\d+)\s+[\d.]+\s+[\d.]+\s+[\d.]+\s+([\d.]+)\s+([\d.]+)",
        text,
    )
    if metrc is None:
        raise CommandError(f"stress-ng printed no metrics for the {stressor} stressor: {_tail(text)}")
    return {
        "tool": "stress-ng",
        "bogo_ops": int(metrc.group(1)),
        "bogo_ops_per_s": float(metrc.group(2)),
        "bogo_ops_per_s_cpu_time": float(metrc.group(3)),
    }


# --- memory: memtester -----------------------------------------------------------------------------


def _memory(args: Mapping[str, Any], ctx: Context, progress: Progress) -> dict[str, Any]:
    available = _mem_available_mib(ctx)
    # Half of what is free by default: the ramdisk itself lives in memory, and memtester locks its share.
    default = max(16, available // 2 - 64) if available else 64
    size = _int_arg(args, "size_mib", default, 1, 1 << 24)
    loops = _int_arg(args, "loops", 1, 1, 1000)
    timeout = _int_arg(args, "timeout_s", 3600, 10, MAX_SECONDS)
    progress(0, loops, f"memtester {size} MiB x {loops}")
    status, out, _ = run_tool(["memtester", f"{size}M", str(loops)], timeout, merge_stderr=True)
    report = parse_memtester(out)
    if not report["tests"]:
        raise CommandError(f"memtester exited with status {status} before any test: {_tail(out)}")
    # Its exit status has a bit per kind of failure: one the output did not show still fails the run.
    if status != 0 and not report["failures"]:
        report["failures"].append(f"exit status {status}")
    report.update(exit_status=status, loops=loops)
    return {"memory": report}


def _mem_available_mib(ctx: Context) -> int:
    try:
        text = (ctx.sys_root / "proc" / "meminfo").read_text()
    except OSError:
        return 0
    m = re.search(r"^MemAvailable:\s*(\d+) kB", text, re.MULTILINE)
    return int(m.group(1)) // 1024 if m else 0


def parse_memtester(text: str) -> dict[str, Any]:
    """memtester's verdicts: {"tool", "wanted_mib", "tested_mib", "tests": {name: "ok" | "FAILURE..."},
    "failures": [names]}. memtester erases its progress with backspaces: only what follows the last
    one on a line is its verdict."""
    version = re.search(r"memtester version (\S+)", text)
    wanted = re.search(r"^want\s+(\d+)MB", text, re.MULTILINE)
    got = re.search(r"^got\s+(\d+)MB", text, re.MULTILINE)
    tests: dict[str, str] = {}
    failures: list[str] = []
    for raw in text.splitlines():
        m = re.match(r"^\s{2}([A-Za-z0-9 -]+?)\s*:(.*)$", raw)
        if m is None:
            continue
        name, rest = m.group(1).strip(), m.group(2)
        verdict = rest.rsplit("\b", 1)[-1].strip()
        if "FAILURE" in rest:
            verdict = "FAILURE" + rest.split("FAILURE", 1)[1].strip()[:200]
        if not verdict:
            continue
        # With loops > 1 a test is listed once per loop: one failure anywhere fails it.
        if tests.get(name, "ok") == "ok":
            tests[name] = verdict
        if verdict != "ok" and name not in failures:
            failures.append(name)
    return {
        "tool": f"memtester {version.group(1) if version else '?'}",
        "wanted_mib": int(wanted.group(1)) if wanted else None,
        "tested_mib": int(got.group(1)) if got else None,
        "tests": tests,
        "failures": failures,
    }


# --- disks: fio ------------------------------------------------------------------------------------


def _disk(args: Mapping[str, Any], ctx: Context, progress: Progress) -> dict[str, Any]:
    seconds = _int_arg(args, "seconds", 30, 1, MAX_SECONDS)
    size = _int_arg(args, "size_mib", 1024, 1, 1 << 30)
    names = args.get("disks")
    if names is not None and (not isinstance(names, list) or not all(isinstance(n, str) for n in names)):
        raise CommandError(f"burn-in disks must be a list of disk names, not {names!r}")
    jobs = args.get("jobs") or list(FIO_JOBS)
    if not isinstance(jobs, list) or not jobs or any(j not in FIO_JOBS for j in jobs):
        raise CommandError(f"burn-in jobs must be a list of {', '.join(FIO_JOBS)}, not {jobs!r}")
    disks = find_disks(ctx, names)
    if not disks:
        raise CommandError("fio: this machine has no disk to test")
    results = []
    for i, disk in enumerate(disks):
        progress(i, len(disks), f"fio on {disk.name}: {', '.join(jobs)}, {seconds} s each")
        # Never past the end of a small disk: fio would stop at it, and the region would differ by disk.
        region = max(1, min(size, disk.size >> 20))
        argv = fio_argv(str(disk.path), jobs, seconds, region)
        status, out, err = run_tool(argv, len(jobs) * (seconds + GRACE_S))
        if status != 0:
            raise CommandError(f"fio on {disk.name} exited with status {status}: {_tail(err or out)}")
        parsed = parse_fio(out)
        results.append({"name": disk.name, "size_mib": region, **parsed})
    return {"disks": results}


def fio_argv(filename: str, jobs: list[str], seconds: int, size_mib: int) -> list[str]:
    """One fio run, the jobs one after another (stonewall), direct I/O on the first `size_mib` MiB."""
    argv = [
        "fio", "--output-format=json", f"--filename={filename}", "--direct=1", "--ioengine=libaio",
        f"--runtime={seconds}", "--time_based", f"--size={size_mib}M", "--randrepeat=0",
    ]  # fmt: skip
    for name in jobs:
        rw, bs, depth = FIO_JOBS[name]
        argv += [f"--name={name}", f"--rw={rw}", f"--bs={bs}", f"--iodepth={depth}", "--stonewall"]
    return argv


def parse_fio(text: str) -> dict[str, Any]:
    """{"tool": "fio-3.33", "jobs": [{"job", "rw", "iops", "bandwidth_mib_s", "lat_p50_ms", "lat_p99_ms",
    "io_mib"}]} from fio's JSON output: the completion latency (clat) percentiles of the job's direction."""
    start = text.find("{")
    try:
        doc = json.loads(text[start:]) if start >= 0 else None
    except ValueError:
        doc = None
    if not isinstance(doc, dict) or not isinstance(doc.get("jobs"), list):
        raise CommandError(f"fio printed no JSON report: {_tail(text)}")
    jobs = []
    for job in doc["jobs"]:
        if not isinstance(job, dict):
            continue
        if job.get("error"):
            raise CommandError(f"fio job {job.get('jobname')} failed with error {job.get('error')}")
        for direction in ("read", "write"):
            stats = job.get(direction)
            if not isinstance(stats, dict) or not stats.get("io_bytes"):
                continue
            pct = (stats.get("clat_ns") or {}).get("percentile") or {}
            jobs.append(
                {
                    "job": str(job.get("jobname")),
                    "rw": direction,
                    "iops": round(float(stats.get("iops") or 0.0), 1),
                    # fio's bw is in KiB/s.
                    "bandwidth_mib_s": round(float(stats.get("bw") or 0) / 1024, 2),
                    "lat_p50_ms": _ms(pct.get("50.000000")),
                    "lat_p99_ms": _ms(pct.get("99.000000")),
                    "io_mib": round(int(stats["io_bytes"]) / (1 << 20), 1),
                }
            )
    if not jobs:
        raise CommandError("fio's report has no job that did any I/O")
    return {"tool": str(doc.get("fio version") or "fio"), "jobs": jobs}


def _ms(ns: object) -> float | None:
    return round(float(ns) / 1e6, 3) if isinstance(ns, int | float) else None


# --- network: iperf3 -------------------------------------------------------------------------------


def _network(args: Mapping[str, Any], ctx: Context, progress: Progress) -> dict[str, Any]:
    """iperf3 as a client of a server: one the operator names, or the partner node's agent serving
    (the conductor found its address and port and passes them on as `server` and `port`)."""
    server = args.get("server")
    if not isinstance(server, str) or not re.fullmatch(r"[A-Za-z0-9.:-]{1,253}", server):
        raise CommandError(f"burn-in network needs server: an iperf3 server's address, not {server!r}")
    port = _int_arg(args, "port", 5201, 1, 65535)
    seconds = _int_arg(args, "seconds", 10, 1, MAX_SECONDS)
    progress(0, seconds, f"iperf3 to {server}:{port} for {seconds} s")
    argv = ["iperf3", "--client", server, "--port", str(port), "--time", str(seconds), "--json"]
    # A partner's agent starts its server when it polls its command, which the conductor queued just
    # before handing this one out: a refused connection is retried for a while, not a failed test.
    connect_until = time.monotonic() + (CONNECT_WAIT_S if args.get("partner") else 0.0)
    while True:
        status, out, err = run_tool(argv, seconds + GRACE_S)
        report = parse_iperf3(out)
        refused = "unable to connect" in str(report.get("error") or "")
        if not refused or time.monotonic() >= connect_until:
            break
        time.sleep(1.0)
    if status != 0 or report.get("error"):
        raise CommandError(f"iperf3 to {server}:{port} failed: {report.get('error') or _tail(err or out)}")
    return {"network": {**report, "server": server, "port": port}}


def _network_serve(args: Mapping[str, Any], ctx: Context, progress: Progress) -> dict[str, Any]:
    """iperf3 as the server of one client (a partner node's network burn-in), on the address this
    agent reaches the conductor from (`bind`), for at most `seconds`: then it is killed with its
    process group and the command fails, so a partner that never came cannot hold the node."""
    port = _int_arg(args, "port", 5201, 1024, 65535)
    seconds = _int_arg(args, "seconds", 600, 10, MAX_SECONDS)
    bind = args.get("bind")
    try:
        address = str(ipaddress.ip_address(bind)) if bind is not None else None
    except ValueError:
        raise CommandError(f"burn-in network serve: bind must be an IP address, not {bind!r}") from None
    where = f"[{address}]:{port}" if address and ":" in address else f"{address or '*'}:{port}"
    progress(0, seconds, f"iperf3 server on {where} for one client, at most {seconds} s")
    argv = ["iperf3", "--server", "--one-off", "--port", str(port), "--json"]
    if address:
        argv += ["--bind", address]
    status, out, err = run_tool(
        argv, seconds, timed_out=f"iperf3 server on {where}: no client came and finished within {seconds} s"
    )
    report = parse_iperf3(out)
    if status != 0 or report.get("error"):
        raise CommandError(f"iperf3 server on {where} failed: {report.get('error') or _tail(err or out)}")
    return {"network_serve": {**report, "client": iperf3_client(out), "bind": address, "port": port}}


def iperf3_client(text: str) -> str | None:
    """The address of the client an iperf3 server's --json report says it accepted."""
    try:
        doc = json.loads(text)
        host = doc["start"]["accepted_connection"]["host"]
    except (ValueError, KeyError, TypeError):
        return None
    return host if isinstance(host, str) else None


def parse_iperf3(text: str) -> dict[str, Any]:
    """{"tool", "sent_mbps", "received_mbps", "retransmits"} (Mbit/s) from iperf3 --json, or {"error"}."""
    try:
        doc = json.loads(text)
    except ValueError:
        return {"error": f"iperf3 printed no JSON report: {_tail(text)}"}
    if not isinstance(doc, dict):
        return {"error": "iperf3's report is not an object"}
    if doc.get("error"):
        return {"error": str(doc["error"])[:300]}
    end = doc.get("end") or {}
    sent, received = end.get("sum_sent") or {}, end.get("sum_received") or {}
    version = ((doc.get("start") or {}).get("version")) or "iperf3"
    return {
        "tool": str(version),
        "sent_mbps": round(float(sent.get("bits_per_second") or 0) / 1e6, 1),
        "received_mbps": round(float(received.get("bits_per_second") or 0) / 1e6, 1),
        "retransmits": sent.get("retransmits"),
    }


RUNNERS = {
    "cpu": _cpu,
    "memory": _memory,
    "disk": _disk,
    "network": _network,
    "network_serve": _network_serve,
}
