"""Prometheus metrics: one registry per conductor process, served at /metrics by the API.

Rules of this module:
1. Nothing here adds work per packet. The netboot servers already count what they do (their
   `counters` / `drops` / `sent` attributes); NetbootCollector reads those plain integers when a
   scrape asks, and only then.
2. Node counts are computed at scrape time from the database with one grouped query (`refresh_nodes`),
   never kept up to date per node: they stay right whatever conductor changed the node.
3. Everything the conductor counts (transitions, steps, deploys, BMC calls, webhooks) is a
   prometheus_client Counter or Histogram updated in-process; a restart starts them from zero, which is
   what Prometheus' rate() expects of a counter.
4. The registry is the Metrics object's own, not prometheus_client's global one: two conductors in one
   process (the tests) never share series.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter as Tally
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import fields
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from bootforge.conductor import states
from bootforge.db.engine import Database
from bootforge.db.models import Node
from bootforge.drivers import base

log = logging.getLogger("bootforge.metrics")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Steps run from milliseconds (fake, power) to an hour (a large image over a slow link).
STEP_BUCKETS = (0.05, 0.25, 1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600)
DEPLOY_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 900, 1200, 1800, 2700, 3600, 7200)
BMC_BUCKETS = (0.005, 0.025, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60)
LAG_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)

POWER_STATES = (base.POWER_ON, base.POWER_OFF)

# TFTP and HTTP-boot counters that are a refused or dropped request, exported as drops by reason;
# the other fields are what was served.
TFTP_DROPS = (
    "malformed",
    "unexpected",
    "duplicate_requests",
    "overloaded",
    "client_limited",
    "foreign_tid",
    "dropped",
    "stale_acks",
)
TFTP_ERRORS = ("send_errors", "socket_errors", "event_errors")
HTTP_DROPS = (
    "rejected_connections",
    "rejected_per_client",
    "evicted",
    "not_found",
    "bad_requests",
    "timeouts",
    "head_timeouts",
    "too_long",
    "unsatisfiable",
)
HTTP_ERRORS = ("socket_errors", "script_errors", "event_errors", "internal_errors")


class NodeCounts(Collector):
    """Nodes by provision state, power state and maintenance, from the last `refresh_nodes`."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, str | None, bool, int]] = []

    def collect(self) -> Iterator[GaugeMetricFamily]:
        # Every known state is exported, at 0 when empty, so a series does not vanish and reappear.
        by_state = dict.fromkeys(sorted(states.ALL_STATES | states.STABLE_STATES), 0)
        by_power = dict.fromkeys(POWER_STATES, 0)
        maintenance = 0
        for provision, power, maint, n in self.rows:
            by_state[provision] = by_state.get(provision, 0) + n
            key = power or "none"
            by_power[key] = by_power.get(key, 0) + n
            maintenance += n if maint else 0
        g = GaugeMetricFamily(
            "bootforge_nodes_by_provision_state", "Nodes in each provision state.", labels=["state"]
        )
        for state, n in by_state.items():
            g.add_metric([state], n)
        yield g
        g = GaugeMetricFamily(
            "bootforge_nodes_by_power_state",
            'Nodes by last known power state ("none": never read).',
            labels=["state"],
        )
        for state, n in by_power.items():
            g.add_metric([state], n)
        yield g
        yield GaugeMetricFamily(
            "bootforge_nodes_in_maintenance", "Nodes in maintenance mode.", value=maintenance
        )


class NetbootCollector(Collector):
    """The DHCP, TFTP and HTTP-boot servers' own counters, read at scrape time.

    Only the servers of this process: forked TFTP workers (netboot.tftp_workers > 1) keep theirs.
    """

    def __init__(self) -> None:
        self.servers: Sequence[Any] = ()

    def collect(self) -> Iterator[Metric]:
        from bootforge.servers.dhcp import DhcpServer
        from bootforge.servers.dhcp6 import Dhcp6Server
        from bootforge.servers.http_boot import HttpBootServer
        from bootforge.servers.tftp import TftpServer

        dhcp = [s for s in self.servers if isinstance(s, DhcpServer)]
        dhcp6 = [s for s in self.servers if isinstance(s, Dhcp6Server)]
        tftp = [s for s in self.servers if isinstance(s, TftpServer)]
        http = [s for s in self.servers if isinstance(s, HttpBootServer)]
        if dhcp:
            yield from _dhcp_families(dhcp)
        if dhcp6:
            yield from _dhcp6_families(dhcp6)
        if tftp:
            yield from _tftp_families(tftp)
        if http:
            yield from _http_families(http)


def _counter(name: str, doc: str, labels: list[str], values: Iterable[tuple[list[str], float]]) -> Any:
    family = CounterMetricFamily(name, doc, labels=labels)
    for label_values, value in values:
        family.add_metric(label_values, value)
    return family


def _summed(counters: Iterable[Any], names: Iterable[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for c in counters:
        for name in names:
            out[name] = out.get(name, 0) + getattr(c, name)
    return out


def _dhcp_families(servers: list[Any]) -> Iterator[CounterMetricFamily]:
    sent: dict[str, int] = {}
    drops: dict[str, int] = {}
    for s in servers:
        if s.core is not None:
            for kind, n in s.core.sent.items():
                sent[kind] = sent.get(kind, 0) + n
        for reason, n in s.drops.items():
            drops[reason] = drops.get(reason, 0) + n
    yield _counter(
        "bootforge_dhcp_replies",
        "DHCP replies sent, by message kind.",
        ["kind"],
        (([k], v) for k, v in sent.items()),
    )
    yield _counter(
        "bootforge_dhcp_drops",
        "DHCP datagrams or replies dropped, by reason.",
        ["reason"],
        (([k], v) for k, v in drops.items()),
    )
    yield _counter(
        "bootforge_dhcp_lease_commits",
        "Lease batches written to the database.",
        [],
        [([], sum(s.commits for s in servers))],
    )


def _dhcp6_families(servers: list[Any]) -> Iterator[Metric]:
    from bootforge.servers.dhcp6 import RECEIVED_LABELS

    received: Tally[str] = Tally({label: 0 for label in RECEIVED_LABELS})
    sent: Tally[str] = Tally()
    drops: Tally[str] = Tally()
    defects: Tally[str] = Tally()
    no_boot_file: Tally[str] = Tally()
    leases: Tally[str] = Tally()
    for s in servers:
        received.update(s.received)
        sent.update(s.sent)
        drops.update(s.drops)
        if s.core is not None:
            defects.update(s.core.option_drops)
            no_boot_file.update(s.core.no_boot_file)
        leases.update(s.lease_states())
    yield _counter(
        "bootforge_dhcp6_received",
        "DHCPv6 datagrams received, by message type (a relayed one as relay_forw), before the rate limit.",
        ["type"],
        (([k], v) for k, v in received.items()),
    )
    yield _counter(
        "bootforge_dhcp6_replies",
        "DHCPv6 replies sent, by message kind.",
        ["kind"],
        (([k], v) for k, v in sent.items()),
    )
    yield _counter(
        "bootforge_dhcp6_drops",
        "DHCPv6 datagrams or replies dropped, by reason.",
        ["reason"],
        (([k], v) for k, v in drops.items()),
    )
    yield _counter(
        "bootforge_dhcp6_option_defects",
        "Malformed DHCPv6 options skipped in messages otherwise answered, by defect.",
        ["defect"],
        (([k], v) for k, v in defects.items()),
    )
    yield _counter(
        "bootforge_dhcp6_no_boot_file",
        "DHCPv6 answers given an address but no boot file, by reason.",
        ["reason"],
        (([k], v) for k, v in no_boot_file.items()),
    )
    yield _counter(
        "bootforge_dhcp6_lease_commits",
        "DHCPv6 lease batches written to the lease file.",
        [],
        [([], sum(s.commits for s in servers))],
    )
    gauge = GaugeMetricFamily(
        "bootforge_dhcp6_leases",
        "DHCPv6 leases by state, as last written to the lease file.",
        labels=["state"],
    )
    for state, n in sorted(leases.items()):
        gauge.add_metric([state], n)
    yield gauge


def _tftp_families(servers: list[Any]) -> Iterator[CounterMetricFamily]:
    c = _summed((s.counters for s in servers), [f.name for f in fields(servers[0].counters)])
    yield _counter("bootforge_tftp_requests", "TFTP read requests accepted.", [], [([], c["requests"])])
    yield _counter(
        "bootforge_tftp_transfers",
        "TFTP transfers ended, by outcome.",
        ["outcome"],
        [(["completed"], c["completed"]), (["size_probe"], c["size_probes"]), (["failed"], c["failed"])],
    )
    yield _counter(
        "bootforge_tftp_drops",
        "TFTP datagrams or requests dropped, by reason.",
        ["reason"],
        (([r], c[r]) for r in TFTP_DROPS),
    )
    yield _counter(
        "bootforge_tftp_retransmits", "TFTP packets sent again after a timeout.", [], [([], c["retransmits"])]
    )
    yield _counter(
        "bootforge_tftp_errors",
        "TFTP socket and callback errors, by kind.",
        ["kind"],
        (([k], c[k]) for k in TFTP_ERRORS),
    )


def _http_families(servers: list[Any]) -> Iterator[CounterMetricFamily]:
    c = _summed((s.counters for s in servers), [f.name for f in fields(servers[0].counters)])
    yield _counter(
        "bootforge_http_boot_requests",
        "HTTP boot requests answered, by kind (files, scripts, ranges are subsets of all).",
        ["kind"],
        [
            (["all"], c["requests"]),
            (["file"], c["files"]),
            (["script"], c["scripts"]),
            (["range"], c["ranges"]),
        ],
    )
    yield _counter(
        "bootforge_http_boot_connections", "HTTP boot connections accepted.", [], [([], c["connections"])]
    )
    yield _counter(
        "bootforge_http_boot_sent_bytes",
        "Bytes of HTTP boot response bodies sent.",
        [],
        [([], c["bytes_sent"])],
    )
    yield _counter(
        "bootforge_http_boot_drops",
        "HTTP boot connections or requests refused or dropped, by reason.",
        ["reason"],
        (([r], c[r]) for r in HTTP_DROPS),
    )
    yield _counter(
        "bootforge_http_boot_errors",
        "HTTP boot socket, script and internal errors, by kind.",
        ["kind"],
        (([k], c[k]) for k in HTTP_ERRORS),
    )


class Metrics:
    """The conductor's metrics; `render()` is what /metrics answers."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=False)
        self.transitions = Counter(
            "bootforge_provision_transitions",
            "Provision state changes made by this conductor, by previous and new state.",
            ["from_state", "to_state"],
            registry=r,
        )
        self.failures = Counter(
            "bootforge_node_failures",
            "Node failures recorded (last_error set) by this conductor, by the state the node is left in.",
            ["state"],
            registry=r,
        )
        self.maintenance_changes = Counter(
            "bootforge_maintenance_changes",
            "Maintenance mode set or unset on a node, by the operator or by power sync.",
            ["change"],
            registry=r,
        )
        self.step_seconds = Histogram(
            "bootforge_step_duration_seconds",
            "Duration of deploy and clean steps (asynchronous agent steps included), by outcome.",
            ["kind", "step", "outcome"],
            buckets=STEP_BUCKETS,
            registry=r,
        )
        self.deploy_seconds = Histogram(
            "bootforge_deploy_duration_seconds",
            "Time from a deploy (or rebuild) request to active or deploy failed.",
            ["outcome"],
            buckets=DEPLOY_BUCKETS,
            registry=r,
        )
        self.bmc_seconds = Histogram(
            "bootforge_bmc_call_duration_seconds",
            "Latency of BMC calls made by the conductor (power reads and changes), failed ones included.",
            ["hardware_type", "call"],
            buckets=BMC_BUCKETS,
            registry=r,
        )
        self.bmc_errors = Counter(
            "bootforge_bmc_call_errors",
            "BMC calls that failed, by kind of failure (timeout, driver_error, error).",
            ["hardware_type", "call", "kind"],
            registry=r,
        )
        self.agent_requests = Counter(
            "bootforge_agent_requests",
            "Calls of deploy agents (lookup, command poll, report), by HTTP status class.",
            ["call", "status"],
            registry=r,
        )
        self.loop_lag = Histogram(
            "bootforge_event_loop_lag_seconds",
            "How late the event loop ran a timer: time blocked by work that did not yield.",
            buckets=LAG_BUCKETS,
            registry=r,
        )
        self.webhook_deliveries = Counter(
            "bootforge_webhook_deliveries",
            "Webhook POST attempts, by target and outcome (delivered, failed).",
            ["target", "outcome"],
            registry=r,
        )
        self.webhook_dropped = Counter(
            "bootforge_webhook_dropped",
            "Webhook events given up, by target and reason (attempts, age, overflow).",
            ["target", "reason"],
            registry=r,
        )
        self.webhook_pending = Gauge(
            "bootforge_webhook_pending",
            "Events in the outbox waiting for delivery, by target (at the last dispatcher round).",
            ["target"],
            registry=r,
        )
        self.stream_clients = Gauge(
            "bootforge_event_stream_clients",
            "Open server-sent event streams (CloudEvents and node timelines).",
            registry=r,
        )
        self.stream_overflows = Counter(
            "bootforge_event_stream_overflows",
            "Event stream clients cut off because they read slower than events came.",
            registry=r,
        )
        self.scrape_seconds = Gauge(
            "bootforge_metrics_node_query_seconds",
            "Time the node-count query of the previous scrape took.",
            registry=r,
        )
        self.nodes = NodeCounts()
        self.netboot = NetbootCollector()
        r.register(self.nodes)
        r.register(self.netboot)

    def watch_netboot(self, servers: Sequence[Any]) -> None:
        """Export these servers' counters (the list is read at each scrape, so it may grow)."""
        self.netboot.servers = servers

    async def refresh_nodes(self, db: Database) -> None:
        """One grouped query: node counts by provision state, power state and maintenance."""
        loop = asyncio.get_running_loop()
        began = loop.time()
        stmt = select(Node.provision_state, Node.power_state, Node.maintenance, func.count()).group_by(
            Node.provision_state, Node.power_state, Node.maintenance
        )
        async with db.read() as s:
            rows = (await s.execute(stmt)).all()
        self.nodes.rows = [(p, w, bool(m), int(n)) for p, w, m, n in rows]
        self.scrape_seconds.set(loop.time() - began)

    async def render(self, db: Database) -> bytes:
        await self.refresh_nodes(db)
        # No await between the refresh and this: a concurrent scrape cannot swap the rows in between.
        return generate_latest(self.registry)

    async def watch_loop(self, interval: float) -> None:
        """Measure how late a timer fires, for ever (cancelled by the conductor's stop)."""
        loop = asyncio.get_running_loop()
        while True:
            expected = loop.time() + interval
            await asyncio.sleep(interval)
            self.loop_lag.observe(max(0.0, loop.time() - expected))
