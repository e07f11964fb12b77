"""Burn-in: clean steps that prove a machine's hardware before it becomes `available`.

`burnin_cpu` (stress-ng), `burnin_memory` (memtester), `burnin_disk` (fio: sequential and 4k random
reads and writes) and `burnin_network` (iperf3 to a named server, or to a partner node) are clean
steps of the `direct` deploy interface. They are manual (priority 0) unless `[burnin] automated_clean`
names them; then they run before the metadata erase, since the disk step writes over the start of
every disk.

The agent measures (bootforge/agent/burnin.py); the conductor judges: `take_result` keeps the numbers in
`driver_internal_info["burnin"][kind]` (shown by `baremetal node show`), puts them on the node's
timeline, and fails the node (clean failed) with the numbers in last_error when a threshold is missed,
e.g. "burn-in disk failed: fio randread_4k on /dev/vda: 812 IOPS < min_iops 5000".

Two nodes' agents measure the network between them without either listening for the conductor (the
agent only ever calls the API): node A runs `burnin_network_serve`, whose agent runs `iperf3 -s -1` for
one client; before the command is queued the conductor records on A where it serves (the address A's
agent looked up from, the port, until when) in `driver_internal_info["burnin_serving"]`. Node B's
`burnin_network` with `partner: A` waits (at most partner_wait seconds) for that record, then runs the
client step against it as if the operator had named the server. The record goes when A's step ends.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import ipaddress
import math
from collections.abc import Awaitable, Callable
from typing import Any, Final

from bootforge.config import Settings
from bootforge.db.models import Node
from bootforge.drivers import agent, base
from bootforge.drivers.burnin_settings import SERVE, STEP_KINDS, argsinfo, check_args
from bootforge.errors import DriverError, InvalidInput
from bootforge.text import printable

COMMAND: Final = "burnin"
RESULTS: Final = "burnin"  # the driver_internal_info key
# Priorities in automated cleaning: all before erase_devices_metadata (99), which then wipes what the
# disk burn-in wrote.
AUTOMATED_PRIORITY: Final = {"cpu": 140, "memory": 130, "disk": 120, "network": 110}
STEP_KIND: Final = {f"burnin_{kind}": kind for kind in STEP_KINDS}
RAMDISK_TOOLS: Final = ("stress-ng", "memtester", "fio", "iperf3")
MAX_DISKS = 64
MAX_JOBS = 8
SERVING: Final = "burnin_serving"  # driver_internal_info: where this node's agent serves iperf3
SERVE_SECONDS = 600
SERVE_PORT = 5201
PARTNER_WAIT = 300
POLL_S = 2.0
# The states in which a node's serve record is live: its serve step is running (cleaning: waiting
# for its agent) or its agent serves (clean wait). A record left by a failed clean is not.
SERVING_STATES: Final = frozenset({"cleaning", "clean wait"})

Now = Callable[[], dt.datetime]
Sleep = Callable[[float], Awaitable[None]]


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class BurninAgentDeploy(agent.AgentDeploy):
    """The agent's deploy interface (`direct`) with the burn-in clean steps."""

    def __init__(self, settings: Settings, now: Now = utcnow, sleep: Sleep = asyncio.sleep) -> None:
        super().__init__(settings)
        # The clock and the pause of the conductor's waits (the partner's record, the agent's lookup).
        self.now, self.sleep = now, sleep

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
        """iperf3 from the machine to an iperf3 server the operator runs (`server`), or to the agent of
        a partner node running burnin_network_serve (`partner`)."""
        return await self._burnin(task, "network", args)

    @base.clean_step(priority=0, may_rerun=True, abortable=True, argsinfo=argsinfo(SERVE))
    async def burnin_network_serve(self, task: base.Task, **args: Any) -> base.StepResult:
        """The machine's agent serves one iperf3 client (a partner node's burnin_network) for at most
        `seconds`; the conductor records where, for the partner's step to find."""
        where = f"clean_steps burnin_{SERVE}.args"
        measure, _ = check_args(SERVE, args, where)
        task.set_internal(**{SERVING: None})
        await agent.boot_ramdisk(task, "burn-in (network serve)")
        address = await self._agent_address(task)
        seconds = int(measure.get("seconds", SERVE_SECONDS))
        port = int(measure.get("port", SERVE_PORT))
        until = self.now() + dt.timedelta(seconds=seconds)
        serving = {
            "address": address,
            "port": port,
            "until": until.isoformat(timespec="seconds"),
            "boot": task.node.driver_internal_info.get(agent.AGENT_BOOT),
        }
        command = {"kind": SERVE, "seconds": seconds, "port": port, "bind": address, "thresholds": {}}
        what = f"serve iperf3 on {_hostport(address, port)} for one client, until {serving['until']}"
        result = await agent.send_command(task, COMMAND, command, what)
        # Saved with the command (one save), so the agent cannot get it before the record exists. The
        # record names the command: once the conductor takes its outcome (the command is cleared,
        # whether it succeeded or failed) the record is dead even where it was not removed.
        serving["command"] = task.node.driver_internal_info[agent.AGENT_COMMAND]["id"]
        task.set_internal(**{SERVING: serving})
        return result

    async def _burnin(self, task: base.Task, kind: str, given: dict[str, Any]) -> base.StepResult:
        defaults = self.settings.burnin.defaults(kind)
        if kind == "network" and ("partner" in given or "server" in given):
            # The step names its peer: the settings' default server is not a second one.
            defaults = {k: v for k, v in defaults.items() if k not in ("server", "partner", "partner_wait")}
        args = {**defaults, **given}
        where = f"clean_steps burnin_{kind}.args"
        measure, thresholds = check_args(kind, args, where)
        partner: Node | None = None
        if kind == "network" and args.get("partner") is not None:
            partner = await self._partner(task, str(args["partner"]), where)
        await agent.boot_ramdisk(task, f"burn-in ({kind})")
        if partner is not None:
            wait = int(args.get("partner_wait") or PARTNER_WAIT)
            address, port = await self._partner_serving(
                task, partner, wait, int(measure.get("seconds", 10)), where
            )
            measure = {**measure, "server": address, "port": port, "partner": partner.name or partner.uuid}
        command = {"kind": kind, **measure, "thresholds": thresholds}
        return await agent.send_command(task, COMMAND, command, describe(kind, measure))

    async def _agent_address(self, task: base.Task) -> str:
        """The address the node's agent looked up from, waiting for its lookup (bounded by the clean
        callback timeout, the wait its agent would otherwise get)."""
        limit = float(task.settings.clean_callback_timeout)
        deadline = self.now() + dt.timedelta(seconds=limit)
        while True:
            address = await task.agent_address()
            if address is not None:
                try:
                    return str(ipaddress.ip_address(address))
                except ValueError:
                    raise DriverError(
                        f"burn-in network serve: the agent's address is not an IP address "
                        f"({printable(address, 64)})"
                    ) from None
            if self.now() >= deadline:
                raise DriverError(
                    f"burn-in network serve: the node's agent did not look up within {limit:g} s"
                )
            await self.sleep(POLL_S)

    async def _partner(self, task: base.Task, ident: str, where: str) -> Node:
        field = f"{where}.partner"
        partner = await task.other_node(ident)
        if partner is None:
            raise InvalidInput(f"{field}: there is no node {printable(ident, 64)}", field)
        if partner.id == task.node.id:
            raise InvalidInput(
                f"{field}: {printable(ident, 64)} is this node itself; name the node running "
                "burnin_network_serve",
                field,
            )
        return partner

    async def _partner_serving(
        self, task: base.Task, partner: Node, wait: int, seconds: int, where: str
    ) -> tuple[str, int]:
        """(address, port) where the partner's agent serves, once its record is there and live."""
        field = f"{where}.partner"
        name = printable(partner.name or partner.uuid, 64)
        deadline = self.now() + dt.timedelta(seconds=wait)
        await task.record(
            "burnin", f"burn-in network: waiting up to {wait} s for node {name} to serve iperf3"
        )
        while True:
            record = serving_record(partner)
            if record is not None:
                address, port, until = record
                # The client needs its seconds and a little for iperf3's start inside the window.
                if until - self.now() < dt.timedelta(seconds=seconds + 5):
                    raise DriverError(
                        f"{field}: node {name}'s iperf3 serve record expired (it serves until "
                        f"{until.isoformat(timespec='seconds')}, too late for a {seconds} s test): "
                        "run its burnin_network_serve again, with more seconds"
                    )
                await task.record(
                    "burnin", f"burn-in network: node {name} serves on {_hostport(address, port)}"
                )
                return address, port
            if self.now() >= deadline:
                raise DriverError(
                    f"{field}: node {name} did not serve iperf3 within partner_wait {wait} s "
                    "(start its clean with burnin_network_serve at the same time as this one)"
                )
            await self.sleep(POLL_S)
            fresh = await task.other_node(partner.uuid)
            if fresh is None:
                raise InvalidInput(f"{field}: node {name} was deleted while this node waited for it", field)
            partner = fresh


def serving_record(node: Node) -> tuple[str, int, dt.datetime] | None:
    """(address, port, until) where the node's agent serves iperf3 now, or None: the record must be of
    the node's current ramdisk boot and its current command, in a state that serves, and well formed
    (it is the conductor's own, but a node row may be edited by hand)."""
    info = node.driver_internal_info or {}
    record = info.get(SERVING)
    if node.provision_state not in SERVING_STATES or not isinstance(record, dict):
        return None
    if not record.get("boot") or record.get("boot") != info.get(agent.AGENT_BOOT):
        return None
    command = info.get(agent.AGENT_COMMAND)
    if not isinstance(command, dict) or not record.get("command") or command.get("id") != record["command"]:
        return None
    try:
        address = str(ipaddress.ip_address(str(record.get("address"))))
        port = int(record["port"])
        until = dt.datetime.fromisoformat(str(record["until"]))
    except (KeyError, TypeError, ValueError):
        return None
    if until.tzinfo is None or not 0 < port < 65536:
        return None
    return address, port, until


def _hostport(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def describe(kind: str, measure: dict[str, Any]) -> str:
    if kind == "cpu":
        return f"burn in the CPUs (stress-ng, {measure.get('seconds', 60)} s)"
    if kind == "memory":
        return f"test the memory (memtester, {measure.get('size_mib', 'half the free')} MiB)"
    if kind == "disk":
        return f"burn in the disks (fio, {measure.get('seconds', 30)} s per job)"
    if kind == SERVE:
        return f"serve iperf3 on port {measure.get('port', SERVE_PORT)}"
    partner = f", partner {measure['partner']}" if measure.get("partner") else ""
    return f"measure the network (iperf3 to {measure.get('server')}{partner})"


# --- the conductor's side of a result ---------------------------------------------------------------


async def take_result(task: base.Task, args: dict[str, Any], result: dict[str, Any]) -> None:
    """Keep a burn-in result on the node and its timeline; DriverError (the node fails) with the numbers
    if a threshold is missed or the hardware failed a test.

    The result comes from the agent: only the numbers bootforge knows are kept, bounded, so a confused
    or hostile ramdisk cannot grow the node record or put arbitrary text in it."""
    kind = args.get("kind")
    if kind == SERVE:
        # The serve step ends here, passed or not: the partner must not connect to it any more.
        task.set_internal(**{SERVING: None})
    if kind not in STEP_KINDS:
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


def _summarise_serve(result: dict[str, Any]) -> dict[str, Any]:
    serve = _section(result, SERVE)
    return {
        "tool": printable(serve.get("tool"), 40),
        "address": printable(serve.get("bind"), 64),
        "port": int(_number(serve.get("port")) or 0),
        "client": printable(serve.get("client"), 64),
        "received_mbps": _need_number(serve.get("received_mbps"), f"result.{SERVE}.received_mbps"),
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


def _judge_serve(s: dict[str, Any], t: dict[str, float]) -> list[str]:
    return []  # the client's step judges the bandwidth: the server measured the same flow


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
    if kind == SERVE:
        where = _hostport(s["address"], s["port"])
        return f"{s['tool']} on {where} served {s['client']}: {s['received_mbps']:.1f} Mbit/s received"
    return f"{s['tool']} to {s['server']}: {s['received_mbps']:.1f} Mbit/s received"


SUMMARISE = {
    "cpu": _summarise_cpu,
    "memory": _summarise_memory,
    "disk": _summarise_disk,
    "network": _summarise_network,
    SERVE: _summarise_serve,
}
JUDGES = {
    "cpu": _judge_cpu,
    "memory": _judge_memory,
    "disk": _judge_disk,
    "network": _judge_network,
    SERVE: _judge_serve,
}
