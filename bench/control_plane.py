"""Control-plane benchmark: bootforge vs OpenStack Ironic through the same Ironic v1 REST API.

Enrols N fake-hardware nodes with one port each, then drives every node through
manage -> provide -> active -> deleted -> DELETE with C nodes in flight, while a separate
client lists all nodes once per second. Prints nodes/s per phase, GET /v1/nodes latency at
N nodes, server RSS, and a bootforge/Ironic ratio table against the targets.

    .venv/bin/python bench/control_plane.py --quick
    .venv/bin/python bench/control_plane.py --target ironic --nodes 1000 --concurrency 50

Scale-out (#13): `--postgres --conductors K` starts a throwaway PostgreSQL server (Debian's binaries,
127.0.0.1 only, as the tests do) and K `bootforge serve` processes on it (role all: each an API and a
conductor, one shared key file); the client spreads its requests over the K APIs. It also reports
GET /v1/nodes?limit=1000 and GET /v1/nodes/{uuid} at N nodes, and the servers' CPU seconds (bootforge
processes, and PostgreSQL's apart) per node lifecycle. `--lifecycle-nodes M` drives only M of the N
nodes through the lifecycle (bounded runs at N=10,000).

    .venv/bin/python bench/control_plane.py --target bootforge --postgres --conductors 2 \
        --nodes 10000 --lifecycle-nodes 3000
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import json
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peers import servers

# The tests' throwaway PostgreSQL server (tests/support/postgres.py), for --postgres.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

REPO = Path(__file__).resolve().parent.parent
DEFAULT_IRONIC_VENV = Path("/opt/bootforge-bench/ironic-venv")
STEPS = (("manage", "manageable"), ("provide", "available"), ("active", "active"), ("deleted", "available"))
FAILED_STATES = {
    "error",
    "enroll failed",
    "deploy failed",
    "clean failed",
    "inspect failed",
    "adopt failed",
    "rescue failed",
    "unrescue failed",
    "service failed",
}
RETRY_STATUSES = {409, 503}  # node locked / conductor busy: real clients retry these
MAX_RETRIES = 5
LIST_SAMPLES = 50

# Ironic 39 standalone on this machine, same workload (from the issue); used when not measured.
REFERENCE_IRONIC = {"enrol": 33.0, "lifecycle": 1.9, "list_p50": 268.0, "idle_rss": 295.0}
TARGETS = {
    "enrol": (">=", 600.0),
    "lifecycle": (">=", 40.0),
    "list_p50": ("<=", 30.0),
    "page_p50": ("<=", 50.0),  # #13: GET /v1/nodes?limit=1000 at 10,000 nodes
    "idle_rss": ("<=", 120.0),
}


class TransportError(Exception):
    pass


class Transport(Protocol):
    async def send(self, method: str, path: str, body: Any) -> tuple[int, bytes]: ...
    async def close(self) -> None: ...


class HttpxTransport:
    def __init__(self, base_url: str, limit: int, headers: dict[str, str]) -> None:
        self._client = httpx.AsyncClient(
            base_url=base_url,
            headers=headers,
            timeout=60.0,
            limits=httpx.Limits(max_connections=limit, max_keepalive_connections=limit),
        )

    async def send(self, method: str, path: str, body: Any) -> tuple[int, bytes]:
        try:
            resp = await self._client.request(method, path, json=body)
        except httpx.HTTPError as exc:
            raise TransportError(f"{type(exc).__name__}: {exc}") from exc
        return resp.status_code, resp.content

    async def close(self) -> None:
        await self._client.aclose()


class AiohttpTransport:
    def __init__(self, base_url: str, limit: int, headers: dict[str, str]) -> None:
        import aiohttp  # optional: only needed with --client aiohttp

        self._errors: tuple[type[BaseException], ...] = (aiohttp.ClientError, TimeoutError)
        self._session = aiohttp.ClientSession(
            base_url=base_url,
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=60),
            connector=aiohttp.TCPConnector(limit=limit),
        )

    async def send(self, method: str, path: str, body: Any) -> tuple[int, bytes]:
        try:
            async with self._session.request(method, path, json=body) as resp:
                return resp.status, await resp.read()
        except self._errors as exc:
            raise TransportError(f"{type(exc).__name__}: {exc}") from exc

    async def close(self) -> None:
        await self._session.close()


class RoundRobin:
    """Spreads calls over several APIs (one per `bootforge serve` process) in turn."""

    def __init__(self, transports: list[Transport]) -> None:
        self._all = transports
        self._next = 0

    async def send(self, method: str, path: str, body: Any) -> tuple[int, bytes]:
        self._next = (self._next + 1) % len(self._all)
        return await self._all[self._next].send(method, path, body)

    async def close(self) -> None:
        for t in self._all:
            await t.close()


@dataclass
class PhaseStats:
    """Requests that failed (by 'METHOD route status'), retries, and one sample body per key."""

    errors: Counter[str] = field(default_factory=Counter)
    samples: dict[str, str] = field(default_factory=dict)
    retries: int = 0
    dropped: int = 0
    requests: int = 0

    def fail(self, key: str, detail: str) -> None:
        self.errors[key] += 1
        self.samples.setdefault(key, detail[:240])


@dataclass
class PhaseResult:
    name: str
    done: int
    attempted: int
    seconds: float
    client_cpu_s: float
    timed_out: bool
    stats: PhaseStats

    @property
    def rate(self) -> float:
        return self.done / self.seconds if self.seconds > 0 else 0.0


@dataclass
class Latency:
    name: str
    samples: list[float] = field(default_factory=list)
    items: int = 0

    def pct(self, q: float) -> float:
        if not self.samples:
            return float("nan")
        ordered = sorted(self.samples)
        return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] * 1000.0


@dataclass
class TargetResult:
    name: str
    api_version: str
    cleaning: str
    ready_s: float
    idle_rss_mib: float
    peak_rss_mib: float = 0.0
    processes: int = 1
    phases: list[PhaseResult] = field(default_factory=list)
    lists: list[Latency] = field(default_factory=list)
    steps: dict[str, Latency] = field(default_factory=dict)
    poller: Latency = field(default_factory=lambda: Latency("poller GET /v1/nodes"))
    # CPU seconds of the bootforge processes and of PostgreSQL per completed lifecycle, in ms.
    cpu_ms_per_lifecycle: tuple[float, float] = (float("nan"), float("nan"))

    def phase(self, name: str) -> PhaseResult | None:
        return next((p for p in self.phases if p.name == name), None)

    @property
    def errors(self) -> int:
        return sum(sum(p.stats.errors.values()) for p in self.phases)


class Api:
    """Ironic v1 calls with error accounting; returns parsed JSON on 2xx, None otherwise."""

    def __init__(self, transport: Transport) -> None:
        self.transport = transport

    async def call(self, stats: PhaseStats, method: str, path: str, route: str, body: Any = None) -> Any:
        for attempt in range(MAX_RETRIES + 1):
            stats.requests += 1
            try:
                status, raw = await self.transport.send(method, path, body)
            except TransportError as exc:
                # Ironic's cheroot keeps only 10 idle keep-alive connections and closes the rest
                # under a pooled client; retried like a reused-connection drop in any client.
                if attempt < MAX_RETRIES:
                    stats.dropped += 1
                    await asyncio.sleep(0.05 * (attempt + 1))
                    continue
                stats.fail(f"{method} {route} transport", str(exc))
                return None
            if 200 <= status < 300:
                try:
                    return json.loads(raw) if raw else {}
                except ValueError:
                    stats.fail(f"{method} {route} {status} not JSON", raw.decode(errors="replace"))
                    return None
            if status in RETRY_STATUSES and attempt < MAX_RETRIES:
                stats.retries += 1
                await asyncio.sleep(0.2 * (attempt + 1))
                continue
            stats.fail(f"{method} {route} {status}", raw.decode(errors="replace"))
            return None
        return None


def make_transport(kind: str, base_url: str, limit: int, version: str) -> Transport:
    headers = {"X-OpenStack-Ironic-API-Version": version, "Accept": "application/json"}
    if kind == "aiohttp":
        return AiohttpTransport(base_url, limit, headers)
    return HttpxTransport(base_url, limit, headers)


async def negotiate_version(base_url: str) -> str:
    """The server's maximum microversion, from the root document or the v1 headers."""
    async with httpx.AsyncClient(base_url=base_url, timeout=10.0) as client:
        root = (await client.get("/")).json()
        docs = [*root.get("versions", []), root.get("default_version") or {}]
        found = [str(d["version"]) for d in docs if d.get("version")]
        if found:
            return max(found, key=lambda v: tuple(int(x) for x in v.split(".")))
        header = (await client.get("/v1")).headers.get("X-OpenStack-Ironic-API-Maximum-Version")
        return str(header or "latest")


async def run_pool(
    items: Iterable[Any], worker: Callable[[Any], Awaitable[None]], concurrency: int, deadline_s: float
) -> bool:
    """Run worker over items with `concurrency` in flight; False when the deadline cut it."""
    shared = iter(items)

    async def lane() -> None:
        for item in shared:
            await worker(item)

    try:
        async with asyncio.timeout(deadline_s), asyncio.TaskGroup() as group:
            for _ in range(concurrency):
                group.create_task(lane())
    except TimeoutError:
        return False
    return True


def mac(index: int) -> str:
    return "52:54:00:" + ":".join(f"{(index >> s) & 0xFF:02x}" for s in (16, 8, 0))


async def timed_phase(
    name: str, attempted: int, body: Callable[[], Awaitable[bool]], stats: PhaseStats, done: Callable[[], int]
) -> PhaseResult:
    cpu0, t0 = time.process_time(), time.perf_counter()
    finished = await body()
    seconds = time.perf_counter() - t0
    return PhaseResult(name, done(), attempted, seconds, time.process_time() - cpu0, not finished, stats)


async def enrol(api: Api, nodes: int, concurrency: int, deadline_s: float, uuids: list[str]) -> PhaseResult:
    stats = PhaseStats()

    async def one(index: int) -> None:
        node = await api.call(
            stats,
            "POST",
            "/v1/nodes",
            "/v1/nodes",
            {"driver": "fake-hardware", "name": f"bench-{index:05d}", "resource_class": "bench"},
        )
        if node is None:
            return
        port = {"node_uuid": node["uuid"], "address": mac(index)}
        if await api.call(stats, "POST", "/v1/ports", "/v1/ports", port) is not None:
            uuids.append(node["uuid"])

    async def body() -> bool:
        return await run_pool(range(nodes), one, concurrency, deadline_s)

    return await timed_phase("enrol", nodes, body, stats, lambda: len(uuids))


async def wait_state(
    api: Api, stats: PhaseStats, uuid: str, verb: str, stable: str, poll_s: float, timeout_s: float
) -> bool:
    path = f"/v1/nodes/{uuid}?fields=provision_state,target_provision_state,last_error"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        await asyncio.sleep(poll_s)
        node = await api.call(stats, "GET", path, "/v1/nodes/{uuid}?fields")
        if node is None:
            return False
        state, target = node.get("provision_state"), node.get("target_provision_state")
        if state == stable and target is None:
            return True
        if state in FAILED_STATES or (target is None and node.get("last_error")):
            stats.fail(f"{verb} ended in '{state}'", str(node.get("last_error")))
            return False
    stats.fail(f"{verb} step timeout", f"no '{stable}' within {timeout_s:.0f} s")
    return False


async def lifecycle_one(
    api: Api, stats: PhaseStats, steps: dict[str, Latency], uuid: str, poll_s: float, step_timeout_s: float
) -> bool:
    route = "/v1/nodes/{uuid}/states/provision"
    for verb, stable in STEPS:
        t0 = time.perf_counter()
        path = f"/v1/nodes/{uuid}/states/provision"
        if await api.call(stats, "PUT", path, route, {"target": verb}) is None:
            return False
        if not await wait_state(api, stats, uuid, verb, stable, poll_s, step_timeout_s):
            return False
        steps[verb].samples.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    if await api.call(stats, "DELETE", f"/v1/nodes/{uuid}", "/v1/nodes/{uuid}") is None:
        return False
    steps["delete"].samples.append(time.perf_counter() - t0)
    return True


async def list_poller(api: Api, stats: PhaseStats, latency: Latency, stop: asyncio.Event) -> None:
    """One GET /v1/nodes per second, as a dashboard or an operator's watch loop would do."""
    while not stop.is_set():
        t0 = time.perf_counter()
        body = await api.call(stats, "GET", "/v1/nodes", "/v1/nodes (poller)")
        elapsed = time.perf_counter() - t0
        if body is not None:
            latency.samples.append(elapsed)
            latency.items = len(body.get("nodes", []))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), max(0.0, 1.0 - elapsed))


async def lifecycle(
    api: Api, poll_api: Api, uuids: list[str], args: argparse.Namespace, result: TargetResult
) -> PhaseResult:
    stats = PhaseStats()
    result.steps = {v: Latency(v) for v, _ in STEPS} | {"delete": Latency("delete")}
    completed: list[str] = []

    async def one(uuid: str) -> None:
        if await lifecycle_one(api, stats, result.steps, uuid, args.poll_interval, args.step_timeout):
            completed.append(uuid)

    async def body() -> bool:
        stop = asyncio.Event()
        poller = asyncio.create_task(list_poller(poll_api, stats, result.poller, stop))
        try:
            return await run_pool(uuids, one, args.concurrency, args.phase_timeout)
        finally:
            stop.set()
            await poller

    return await timed_phase("lifecycle", len(uuids), body, stats, lambda: len(completed))


async def list_latency(api: Api, path: str, samples: int) -> Latency:
    latency, stats = Latency(f"GET {path}"), PhaseStats()
    for _ in range(samples):
        t0 = time.perf_counter()
        body = await api.call(stats, "GET", path, path)
        if body is None:
            break
        latency.samples.append(time.perf_counter() - t0)
        latency.items = len(body.get("nodes", []))
    return latency


async def node_latency(api: Api, uuids: list[str], samples: int) -> Latency:
    """GET /v1/nodes/{uuid} of nodes spread over the whole table."""
    latency, stats = Latency("GET /v1/nodes/{uuid}"), PhaseStats()
    step = max(1, len(uuids) // max(1, samples))
    for uuid in uuids[::step][:samples]:
        t0 = time.perf_counter()
        if await api.call(stats, "GET", f"/v1/nodes/{uuid}", "/v1/nodes/{uuid}") is None:
            break
        latency.samples.append(time.perf_counter() - t0)
        latency.items = 1
    return latency


async def drive(
    base_urls: list[str],
    args: argparse.Namespace,
    result: TargetResult,
    cpu: Callable[[], tuple[float, float]],
) -> None:
    version = result.api_version

    def transport(limit: int) -> Transport:
        each = [make_transport(args.client, url, limit, version) for url in base_urls]
        return each[0] if len(each) == 1 else RoundRobin(each)

    api = Api(transport(args.concurrency))
    side = Api(transport(1))
    try:
        uuids: list[str] = []
        result.phases.append(await enrol(api, args.nodes, args.concurrency, args.phase_timeout, uuids))
        print_phase(result.phases[-1])
        for path in ("/v1/nodes", "/v1/nodes?detail=true", "/v1/nodes?limit=1000"):
            result.lists.append(await list_latency(side, path, LIST_SAMPLES))
            print_latency(result.lists[-1])
        result.lists.append(await node_latency(side, uuids, 200))
        print_latency(result.lists[-1])
        driven = uuids[: args.lifecycle_nodes] if args.lifecycle_nodes else uuids
        before = cpu()
        result.phases.append(await lifecycle(api, side, driven, args, result))
        after = cpu()
        done = max(1, result.phases[-1].done)
        result.cpu_ms_per_lifecycle = (
            1000 * (after[0] - before[0]) / done,
            1000 * (after[1] - before[1]) / done,
        )
        print_phase(result.phases[-1])
        print(
            f"  server CPU per node lifecycle: bootforge {result.cpu_ms_per_lifecycle[0]:.1f} ms"
            + (f", PostgreSQL {result.cpu_ms_per_lifecycle[1]:.1f} ms" if args.postgres else "")
        )
        for latency in [*result.steps.values(), result.poller]:
            print_latency(latency)
    finally:
        await api.transport.close()
        await side.transport.close()


def launch(name: str, args: argparse.Namespace, extra: Sequence[str] = ()) -> servers.Server:
    if name == "ironic":
        return servers.launch_ironic(args.ironic_venv)
    return servers.launch_bootforge(
        args.bootforge_bin, [*args.bootforge_arg, *extra], args.bootforge_automated_clean == "true"
    )


def _cpu_seconds(pid: int, children: bool = False) -> float:
    """utime + stime of `pid` (and, with `children`, of its exited children it waited for)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    ticks = int(fields[11]) + int(fields[12]) + (int(fields[13]) + int(fields[14]) if children else 0)
    return ticks / os.sysconf("SC_CLK_TCK")


@dataclass
class Deployment:
    """What serves one target: its processes and, with --postgres, the database server."""

    servers: list[servers.Server]
    stack: contextlib.ExitStack
    postmaster: int | None = None

    def cpu(self) -> tuple[float, float]:
        mine = sum(_cpu_seconds(p) for s in self.servers for p in servers.process_tree(s.proc.pid))
        pg = 0.0
        if self.postmaster is not None:
            pg = _cpu_seconds(self.postmaster, children=True) + sum(
                _cpu_seconds(p) for p in servers.process_tree(self.postmaster)[1:]
            )
        return mine, pg


def deploy_target(name: str, args: argparse.Namespace) -> Deployment:
    stack = contextlib.ExitStack()
    if name != "bootforge" or not args.postgres:
        server = launch(name, args)
        stack.callback(servers.stop, server, args.keep_state)
        return Deployment([server], stack)
    from support.chaos import start_postgres, stop_postgres
    from support.postgres import running_postgres

    try:
        pg = stack.enter_context(running_postgres())
    except LookupError as exc:
        raise RuntimeError(f"--postgres needs {exc}") from None
    stop_postgres(pg)
    start_postgres(pg, shared_buffers="256MB")
    postmaster = int((pg.datadir / "postmaster.pid").read_text().split()[0])
    config = pg.base.parent / f"{pg.base.name}-bench.toml"
    config.write_text(f'secret_key_file = "{pg.base.parent / (pg.base.name + "-bench.key")}"\n')
    stack.callback(config.unlink, missing_ok=True)
    stack.callback(Path(str(config).replace(".toml", ".key")).unlink, missing_ok=True)
    deployment = Deployment([], stack, postmaster)
    for i in range(args.conductors):
        extra = ["--database-url", pg.url(), "--host", f"bench-c{i}", "--config", str(config)]
        server = launch(name, args, extra)
        stack.callback(servers.stop, server, args.keep_state)
        deployment.servers.append(server)
        # The first one creates the schema and the key's fingerprint; the others start on them.
        servers.wait_ready(server)
    return deployment


def load() -> str:
    """The machine is shared: other work on its 2 cores shows up here and in the numbers."""
    one, five, _ = os.getloadavg()
    return f"load avg {one:.1f}/{five:.1f} on {os.cpu_count()} cores"


def run_target(name: str, args: argparse.Namespace) -> TargetResult:
    print(
        f"\n=== {name}: N={args.nodes} C={args.concurrency} client={args.client} "
        f"poll={args.poll_interval * 1000:.0f} ms, {load()} ==="
    )
    began = time.monotonic()
    deployment = deploy_target(name, args)
    server = deployment.servers[0]
    ok = False
    try:
        for s in deployment.servers:
            servers.wait_ready(s)
        ready_s = time.monotonic() - began
        time.sleep(args.settle)
        idle = [servers.memory(s) for s in deployment.servers]
        version = asyncio.run(negotiate_version(server.base_url))
        rss, procs = sum(m.rss_mib for m in idle), sum(m.processes for m in idle)
        result = TargetResult(name, version, server.cleaning, ready_s, rss, processes=procs)
        where = f", {len(deployment.servers)} conductor(s) on PostgreSQL" if deployment.postmaster else ""
        print(
            f"ready in {ready_s:.1f} s, API {version}, {procs} process(es){where}, "
            f"idle RSS {rss:.0f} MiB; cleaning: {server.cleaning}"
        )
        asyncio.run(drive([s.base_url for s in deployment.servers], args, result, deployment.cpu))
        peak = [servers.memory(s) for s in deployment.servers]
        result.peak_rss_mib = sum(m.hwm_mib for m in peak)
        print(
            f"peak RSS (sum of VmHWM over {sum(m.processes for m in peak)} process(es)) "
            f"{result.peak_rss_mib:.0f} MiB; {load()}"
        )
        ok = result.errors == 0
        return result
    finally:
        if not ok:
            for s in deployment.servers:
                print(f"--- {name} log tail ({s.base_url}) ---\n{servers.log_tail(s)}")
        deployment.stack.close()
        if args.keep_state:
            print(f"state kept in {[str(s.state_dir) for s in deployment.servers]}")


def print_phase(phase: PhaseResult) -> None:
    wall = phase.seconds or 1.0
    flag = " TIMED OUT" if phase.timed_out else ""
    print(
        f"{phase.name:>10}: {phase.done}/{phase.attempted} nodes in {phase.seconds:.2f} s = "
        f"{phase.rate:.1f} nodes/s{flag}  ({phase.stats.requests} requests, "
        f"retried {phase.stats.retries} x 409/503 + {phase.stats.dropped} x dropped conn, "
        f"client CPU {100 * phase.client_cpu_s / wall:.0f} %)"
    )
    total = sum(phase.stats.errors.values())
    if total:
        print(f"  !!! {total} ERRORS in {phase.name}:")
        for key, count in phase.stats.errors.most_common():
            print(f"  !!!   {count:6d} x {key}: {phase.stats.samples[key]}")


def print_latency(lat: Latency) -> None:
    print(
        f"  {lat.name:<34} n={len(lat.samples):5d} p50 {lat.pct(0.5):8.1f} ms  "
        f"p95 {lat.pct(0.95):8.1f} ms  max {lat.pct(1.0):8.1f} ms  ({lat.items} nodes/reply)"
    )


def metrics(result: TargetResult) -> dict[str, float]:
    enrol_phase, life = result.phase("enrol"), result.phase("lifecycle")
    plain = next((la for la in result.lists if la.name == "GET /v1/nodes"), None)
    page = next((la for la in result.lists if la.name.endswith("limit=1000")), None)
    one = next((la for la in result.lists if la.name == "GET /v1/nodes/{uuid}"), None)
    detail = next((la for la in result.lists if la.name.endswith("detail=true")), None)
    nan = float("nan")
    return {
        "enrol": enrol_phase.rate if enrol_phase else nan,
        "lifecycle": life.rate if life else nan,
        "list_p50": plain.pct(0.5) if plain else nan,
        "list_p95": plain.pct(0.95) if plain else nan,
        "detail_p50": detail.pct(0.5) if detail else nan,
        "page_p50": page.pct(0.5) if page else nan,
        "page_p95": page.pct(0.95) if page else nan,
        "node_p50": one.pct(0.5) if one else nan,
        "node_p95": one.pct(0.95) if one else nan,
        "cpu_bf": result.cpu_ms_per_lifecycle[0],
        "cpu_pg": result.cpu_ms_per_lifecycle[1],
        "idle_rss": result.idle_rss_mib,
        "peak_rss": result.peak_rss_mib,
    }


LABELS = {
    "enrol": "enrol nodes/s",
    "lifecycle": "lifecycle nodes/s",
    "list_p50": "GET /v1/nodes p50 ms",
    "list_p95": "GET /v1/nodes p95 ms",
    "detail_p50": "GET ?detail=true p50 ms",
    "page_p50": "GET ?limit=1000 p50 ms",
    "page_p95": "GET ?limit=1000 p95 ms",
    "node_p50": "GET /nodes/{id} p50 ms",
    "node_p95": "GET /nodes/{id} p95 ms",
    "cpu_bf": "bootforge CPU ms/lifecycle",
    "cpu_pg": "PostgreSQL CPU ms/lifecycle",
    "idle_rss": "idle RSS MiB",
    "peak_rss": "peak RSS MiB",
}


def verdict(key: str, value: float) -> str:
    if key not in TARGETS:
        return ""
    op, limit = TARGETS[key]
    ok = value >= limit if op == ">=" else value <= limit
    return f"{op} {limit:g}  {'PASS' if ok else 'MISS'}"


def print_summary(results: dict[str, TargetResult]) -> None:
    bf = metrics(results["bootforge"]) if "bootforge" in results else None
    measured = "ironic" in results
    ir = metrics(results["ironic"]) if measured else dict(REFERENCE_IRONIC)
    ir_label = "ironic" if measured else "ironic(ref)"
    print(f"\n{'metric':<24} {'bootforge':>10} {ir_label:>12} {'bf/ironic':>10}  target")
    for key, label in LABELS.items():
        b, i = (bf or {}).get(key, float("nan")), ir.get(key, float("nan"))
        ratio = f"{b / i:10.2f}" if bf and i == i and i else f"{'-':>10}"
        print(f"{label:<24} {b:10.1f} {i:12.1f} {ratio}  {verdict(key, b) if bf else ''}")
    if not measured:
        print(
            "ironic(ref) = the issue's reference numbers for Ironic 39 on this machine, "
            "NOT measured in this run"
        )
    for result in results.values():
        print(f"{result.name}: cleaning {result.cleaning}")
        if result.errors:
            print(f"!!! {result.name}: {result.errors} FAILED REQUESTS/STEPS - numbers are suspect")
        if any(p.timed_out for p in result.phases):
            print(f"!!! {result.name}: a phase hit its deadline - numbers are partial")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--target", choices=("bootforge", "ironic", "both"))
    p.add_argument("--nodes", type=int, default=1000)
    p.add_argument("--concurrency", type=int, default=50)
    p.add_argument("--quick", action="store_true", help="smoke run with N=100")
    p.add_argument(
        "--client",
        choices=("httpx", "aiohttp"),
        help="default aiohttp: httpx's pool at C=50 caps bootforge ~5x lower",
    )
    p.add_argument("--poll-interval", type=float, default=0.1, help="per-node poll, seconds")
    p.add_argument("--step-timeout", type=float, default=120.0, help="seconds per state change")
    p.add_argument("--phase-timeout", type=float, default=900.0, help="seconds per phase")
    p.add_argument("--settle", type=float, default=3.0, help="seconds idle before idle RSS")
    p.add_argument("--ironic-venv", type=Path, default=DEFAULT_IRONIC_VENV)
    p.add_argument("--bootforge-bin", type=Path, default=REPO / ".venv" / "bin" / "bootforge")
    p.add_argument(
        "--bootforge-arg",
        action="append",
        default=[],
        help="extra argument for 'bootforge serve' (repeatable)",
    )
    p.add_argument(
        "--bootforge-automated-clean",
        choices=("false", "true"),
        default="false",
        help="false matches the Ironic config; true runs the fake clean step",
    )
    p.add_argument("--keep-state", action="store_true", help="keep the temp state dirs")
    p.add_argument("--postgres", action="store_true", help="bootforge on a throwaway PostgreSQL server")
    p.add_argument("--conductors", type=int, default=1, help="bootforge serve processes (with --postgres)")
    p.add_argument("--lifecycle-nodes", type=int, default=0, help="drive only this many nodes (0: all)")
    return resolve_defaults(p.parse_args(argv))


def resolve_defaults(args: argparse.Namespace) -> argparse.Namespace:
    """Defaults that depend on what is installed here."""
    if args.quick:
        args.nodes = 100
    if args.client is None:
        args.client = "aiohttp" if importlib.util.find_spec("aiohttp") else "httpx"
        if args.client == "httpx":
            print(
                "!!! aiohttp is not installed: falling back to httpx, whose client overhead "
                "caps fast servers (pip install aiohttp)"
            )
    if args.target is None:
        args.target = "both" if (args.ironic_venv / "bin" / "ironic").exists() else "bootforge"
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    names = ["bootforge", "ironic"] if args.target == "both" else [args.target]
    if "ironic" in names and not (args.ironic_venv / "bin" / "ironic").exists():
        print(f"no Ironic in {args.ironic_venv}: run bench/peers/ironic.sh first")
        return 2
    if "bootforge" in names and not args.bootforge_bin.exists():
        print(f"no bootforge at {args.bootforge_bin}")
        return 2
    if args.conductors != 1 and not args.postgres:
        print("--conductors needs --postgres: several conductors share a PostgreSQL database")
        return 2
    results: dict[str, TargetResult] = {}
    for name in names:
        try:
            results[name] = run_target(name, args)
        except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
            print(f"!!! {name} did not run: {exc}")
    print_summary(results)
    clean = (
        results
        and all(r.errors == 0 and not any(p.timed_out for p in r.phases) for r in results.values())
        and len(results) == len(names)
    )
    return 0 if clean else 1


if __name__ == "__main__":
    sys.exit(main())
