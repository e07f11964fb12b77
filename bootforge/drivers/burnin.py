"""Burn-in: clean steps that prove a machine's hardware before it becomes `available`.

`burnin_cpu` (stress-ng), `burnin_memory` (memtester), `burnin_disk` (fio: sequential and 4k random
reads and writes) and `burnin_network` (iperf3 to a named server) are clean steps of the `direct` deploy
interface. They are manual (priority 0) unless `[burnin] automated_clean` names them; then they run
before the metadata erase, since the disk step writes over the start of every disk.

The agent measures (bootforge/agent/burnin.py); the conductor judges: `take_result` keeps the numbers in
`driver_internal_info["burnin"][kind]` (shown by `baremetal node show`), puts them on the node's
timeline, and fails the node (clean failed) with the numbers in last_error when a threshold is missed,
e.g. "burn-in disk failed: fio randread_4k on /dev/vda: 812 IOPS < min_iops 5000".
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
from typing import Any, Final

from bootforge.config import Settings
from bootforge.drivers import agent, base
from bootforge.drivers.burnin_settings import KINDS, argsinfo, check_args
from bootforge.errors import DriverError, InvalidInput
from bootforge.text import printable

COMMAND: Final = "burnin"
RESULTS: Final = "burnin"  # the driver_internal_info key
# Priorities in automated cleaning: all before erase_devices_metadata (99), which then wipes what the
# disk burn-in wrote.
AUTOMATED_PRIORITY: Final = {"cpu": 140, "memory": 130, "disk": 120, "network": 110}
STEP_KIND: Final = {f"burnin_{kind}": kind for kind in KINDS}
RAMDISK_TOOLS: Final = ("stress-ng", "memtester", "fio", "iperf3")
MAX_DISKS = 64
MAX_JOBS = 8


class BurninAgentDeploy(agent.AgentDeploy):
    """The agent's deploy interface (`direct`) with the burn-in clean steps."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)

    def steps(self, kind: str) -> list[base.StepInfo]:
        found = super().steps(kind)
        if kind != "clean":
            return found
        automated = set(self.settings.burnin.automated_clean)
        return [
            dataclasses.replace(s, priority=AUTOMATED_PRIORITY[STEP_KIND[s.name]])
            if STEP_KIND.get(s.name) in automated
            else s
            for s in found
        ]

    @base.clean_step(priority=0, may_rerun=True, abortable=True, argsinfo=argsinfo("cpu"))
    async def burnin_cpu(self, task: base.Task, **args: Any) -> base.StepResult:
        """Load every CPU with stress-ng and record its bogo-ops/s."""
        return await self._burnin(task, "cpu", args)

    @base.clean_step(priority=0, may_rerun=True, abortable=True, argsinfo=argsinfo("memory"))
    async def burnin_memory(self, task: base.Task, **args: Any) -> base.StepResult:
        """Test memory with memtester; any failed pattern fails the node."""
        return await self._burnin(task, "memory", args)

    @base.clean_step(priority=0, may_rerun=True, abortable=True, argsinfo=argsinfo("disk"))
    async def burnin_disk(self, task: base.Task, **args: Any) -> base.StepResult:
        """fio on every disk: sequential 1 MiB and random 4 KiB reads and writes (writes over the first
        size_mib MiB of each disk), recording IOPS, bandwidth and p50 / p99 latency."""
        return await self._burnin(task, "disk", args)

    @base.clean_step(priority=0, may_rerun=True, abortable=True, argsinfo=argsinfo("network"))
    async def burnin_network(self, task: base.Task, **args: Any) -> base.StepResult:
        """iperf3 from the machine to an iperf3 server the operator runs (`server`)."""
        return await self._burnin(task, "network", args)

    async def _burnin(self, task: base.Task, kind: str, given: dict[str, Any]) -> base.StepResult:
        args = {**self.settings.burnin.defaults(kind), **given}
        measure, thresholds = check_args(kind, args, f"clean_steps burnin_{kind}.args")
        await agent.boot_ramdisk(task, f"burn-in ({kind})")
        command = {"kind": kind, **measure, "thresholds": thresholds}
        return await agent.send_command(task, COMMAND, command, describe(kind, measure))


def describe(kind: str, measure: dict[str, Any]) -> str:
    if kind == "cpu":
        return f"burn in the CPUs (stress-ng, {measure.get('seconds', 60)} s)"
    if kind == "memory":
        return f"test the memory (memtester, {measure.get('size_mib', 'half the free')} MiB)"
    if kind == "disk":
        return f"burn in the disks (fio, {measure.get('seconds', 30)} s per job)"
    return f"measure the network (iperf3 to {measure.get('server')})"


# --- the conductor's side of a result ---------------------------------------------------------------


async def take_result(task: base.Task, args: dict[str, Any], result: dict[str, Any]) -> None:
    """Keep a burn-in result on the node and its timeline; DriverError (the node fails) with the numbers
    if a threshold is missed or the hardware failed a test.

    The result comes from the agent: only the numbers bootforge knows are kept, bounded, so a confused
    or hostile ramdisk cannot grow the node record or put arbitrary text in it."""
    kind = args.get("kind")
    if kind not in KINDS:
        raise DriverError(f"a burn-in command without a known kind ({printable(kind, 40)})")
    raw_thresholds = args.get("thresholds")
    thresholds = (
        {k: float(v) for k, v in raw_thresholds.items() if _number(v) is not None}
        if isinstance(raw_thresholds, dict)
        else {}
    )
    if result.get("kind") != kind:
        raise InvalidInput(f"the agent's burn-in result is not for {kind}", "result.kind")
    summary = SUMMARISE[kind](result)
    failures = JUDGES[kind](summary, thresholds)
    raw_tools = result.get("tools")
    tools: dict[str, Any] = raw_tools if isinstance(raw_tools, dict) else {}
    entry = {
        "at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        # What the ramdisk had (the agent reports it with every run): bootforge's tool names only.
        "ramdisk_tools": {t: tools.get(t) is True for t in RAMDISK_TOOLS},
        "passed": not failures,
        "failures": failures,
        "thresholds": thresholds,
        "seconds": _number(result.get("seconds")),
        **summary,
    }
    kept = dict(task.node.driver_internal_info.get(RESULTS) or {})
    kept[kind] = entry
    task.set_internal(**{RESULTS: kept})
    text = f"burn-in {kind}: {headline(kind, summary)}"
    if failures:
        await task.record("burnin", f"{text}; FAILED: {'; '.join(failures)}", "error")
        raise DriverError(f"burn-in {kind} failed: {'; '.join(failures)}")
    await task.record("burnin", f"{text}; passed")


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def _need_number(value: object, where: str) -> float:
    n = _number(value)
    if n is None:
        raise InvalidInput(f"the agent's burn-in result has no number at {where}", where)
    return n


def _section(result: dict[str, Any], kind: str) -> dict[str, Any]:
    section = result.get(kind)
    if not isinstance(section, dict):
        raise InvalidInput(f"the agent's burn-in result has no {kind} object", f"result.{kind}")
    return section


def _summarise_cpu(result: dict[str, Any]) -> dict[str, Any]:
    cpu = _section(result, "cpu")
    return {
        "tool": printable(cpu.get("tool"), 40),
        "cpus": int(_number(cpu.get("cpus")) or 0),
        "method": printable(cpu.get("method"), 40),
        "duration_s": _number(cpu.get("duration_s")),
        "bogo_ops": int(_need_number(cpu.get("bogo_ops"), "result.cpu.bogo_ops")),
        "bogo_ops_per_s": _need_number(cpu.get("bogo_ops_per_s"), "result.cpu.bogo_ops_per_s"),
    }


def _summarise_memory(result: dict[str, Any]) -> dict[str, Any]:
    memory = _section(result, "memory")
    raw_tests, raw_failures = memory.get("tests"), memory.get("failures")
    tests: dict[str, Any] = raw_tests if isinstance(raw_tests, dict) else {}
    failures: list[Any] = raw_failures if isinstance(raw_failures, list) else []
    return {
        "tool": printable(memory.get("tool"), 40),
        "wanted_mib": _number(memory.get("wanted_mib")),
        "tested_mib": _number(memory.get("tested_mib")),
        "loops": int(_number(memory.get("loops")) or 0),
        "tests": len(tests),
        "failed_tests": [printable(f, 80) for f in failures[:32]],
    }


def _summarise_disk(result: dict[str, Any]) -> dict[str, Any]:
    disks = result.get("disks")
    if not isinstance(disks, list) or not disks:
        raise InvalidInput("the agent's disk burn-in result has no disks", "result.disks")
    out = []
    for i, disk in enumerate(disks[:MAX_DISKS]):
        where = f"result.disks[{i}]"
        if not isinstance(disk, dict) or not isinstance(disk.get("jobs"), list):
            raise InvalidInput(f"{where} must be an object with jobs", where)
        jobs = []
        for j, job in enumerate(disk["jobs"][:MAX_JOBS]):
            jwhere = f"{where}.jobs[{j}]"
            if not isinstance(job, dict):
                raise InvalidInput(f"{jwhere} must be an object", jwhere)
            jobs.append(
                {
                    "job": printable(job.get("job"), 32),
                    "rw": "write" if job.get("rw") == "write" else "read",
                    "iops": _need_number(job.get("iops"), f"{jwhere}.iops"),
                    "bandwidth_mib_s": _need_number(job.get("bandwidth_mib_s"), f"{jwhere}.bandwidth_mib_s"),
                    "lat_p50_ms": _number(job.get("lat_p50_ms")),
                    "lat_p99_ms": _number(job.get("lat_p99_ms")),
                }
            )
        out.append(
            {
                "name": printable(disk.get("name"), 255),
                "tool": printable(disk.get("tool"), 40),
                "size_mib": _number(disk.get("size_mib")),
                "jobs": jobs,
            }
        )
    return {"disks": out}


def _summarise_network(result: dict[str, Any]) -> dict[str, Any]:
    net = _section(result, "network")
    retransmits = _number(net.get("retransmits"))
    return {
        "tool": printable(net.get("tool"), 40),
        "server": printable(net.get("server"), 253),
        "sent_mbps": _number(net.get("sent_mbps")),
        "received_mbps": _need_number(net.get("received_mbps"), "result.network.received_mbps"),
        "retransmits": None if retransmits is None else int(retransmits),
    }


def _judge_cpu(s: dict[str, Any], t: dict[str, float]) -> list[str]:
    floor = t.get("min_bogo_ops_per_s")
    if floor is not None and s["bogo_ops_per_s"] < floor:
        return [f"stress-ng cpu: {s['bogo_ops_per_s']:.1f} bogo-ops/s < min_bogo_ops_per_s {_fmt(floor)}"]
    return []


def _judge_memory(s: dict[str, Any], t: dict[str, float]) -> list[str]:
    failures = []
    if s["failed_tests"]:
        over = f"over {s['tested_mib'] or 0:g} MiB"
        failed = f"{len(s['failed_tests'])} of {s['tests']} tests failed {over}"
        failures.append(f"memtester: {failed}: {', '.join(s['failed_tests'])}")
    floor = t.get("min_tested_mib")
    if floor is not None and (s["tested_mib"] or 0) < floor:
        failures.append(f"memtester could lock {s['tested_mib'] or 0:g} MiB < min_tested_mib {_fmt(floor)}")
    if not s["tests"]:
        failures.append("memtester ran no test")
    return failures


def _judge_disk(s: dict[str, Any], t: dict[str, float]) -> list[str]:
    failures = []
    for disk in s["disks"]:
        for job in disk["jobs"]:
            name = f"fio {job['job']} on {disk['name']}"
            random_job = job["job"].startswith("rand")
            if random_job and "min_iops" in t and job["iops"] < t["min_iops"]:
                failures.append(f"{name}: {job['iops']:.0f} IOPS < min_iops {_fmt(t['min_iops'])}")
            floor = t.get("min_bandwidth_mib_s")
            if not random_job and floor is not None and job["bandwidth_mib_s"] < floor:
                failures.append(
                    f"{name}: {job['bandwidth_mib_s']:.1f} MiB/s < min_bandwidth_mib_s {_fmt(floor)}"
                )
            ceiling = t.get("max_p99_latency_ms")
            p99 = job["lat_p99_ms"]
            if ceiling is not None and p99 is not None and p99 > ceiling:
                failures.append(f"{name}: p99 latency {p99:g} ms > max_p99_latency_ms {_fmt(ceiling)}")
    return failures


def _judge_network(s: dict[str, Any], t: dict[str, float]) -> list[str]:
    floor = t.get("min_bandwidth_mbps")
    if floor is not None and s["received_mbps"] < floor:
        return [
            f"iperf3 to {s['server']}: {s['received_mbps']:.1f} Mbit/s < min_bandwidth_mbps {_fmt(floor)}"
        ]
    return []


def _fmt(value: float) -> str:
    """A threshold as the operator wrote it: 50000000, not 5e+07."""
    return f"{value:.0f}" if value.is_integer() and abs(value) < 1e15 else f"{value:g}"


def headline(kind: str, s: dict[str, Any]) -> str:
    """One line of numbers for the timeline."""
    if kind == "cpu":
        return f"{s['tool']} {s['cpus']} CPUs ({s['method']}): {s['bogo_ops_per_s']:.1f} bogo-ops/s"
    if kind == "memory":
        return f"{s['tool']} {s['tested_mib'] or 0:g} MiB x {s['loops']}: {s['tests']} tests"
    if kind == "disk":
        parts = []
        for disk in s["disks"]:
            for job in disk["jobs"]:
                p50, p99 = job["lat_p50_ms"], job["lat_p99_ms"]
                lat = f", p50 {p50:g} / p99 {p99:g} ms" if p50 is not None and p99 is not None else ""
                rate = f"{job['iops']:.0f} IOPS {job['bandwidth_mib_s']:.1f} MiB/s"
                parts.append(f"{disk['name']} {job['job']} {rate}{lat}")
        return "; ".join(parts)
    return f"{s['tool']} to {s['server']}: {s['received_mbps']:.1f} Mbit/s received"


SUMMARISE = {
    "cpu": _summarise_cpu,
    "memory": _summarise_memory,
    "disk": _summarise_disk,
    "network": _summarise_network,
}
JUDGES = {"cpu": _judge_cpu, "memory": _judge_memory, "disk": _judge_disk, "network": _judge_network}
