"""`bootforge node burnin NODE`: the node's last burn-in results, as the conductor kept them
(driver_internal_info.burnin, drivers/burnin.py), with the verdict of each step."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from bootforge.cli.client import DEFAULT_URL, Api, UrlOpt, console

KINDS = ("cpu", "memory", "disk", "network", "network_serve")


def burnin(
    ident: str,
    url: UrlOpt = DEFAULT_URL,
    as_json: Annotated[bool, typer.Option("--json", help="print the results as JSON")] = False,
) -> None:
    """The node's last burn-in results and verdicts; exits 1 when a step failed or none ran."""
    node = Api(url).call("GET", f"/v1/nodes/{ident}")
    results: dict[str, Any] = (node.get("driver_internal_info") or {}).get("burnin") or {}
    if as_json:
        console.print_json(json.dumps(results))
    elif not results:
        console.print(
            f"node {escape(ident)} has no burn-in results: clean it with the burnin_cpu, burnin_memory, "
            "burnin_disk or burnin_network steps (or set [burnin] automated_clean)"
        )
    else:
        _print(results)
    if not results or not all(r.get("passed") for r in results.values() if isinstance(r, dict)):
        raise typer.Exit(1)


def _print(results: dict[str, Any]) -> None:
    table = Table("Step", "When", "Verdict", "Numbers")
    for kind in KINDS:
        r = results.get(kind)
        if not isinstance(r, dict):
            continue
        verdict = "passed" if r.get("passed") else "FAILED: " + "; ".join(map(str, r.get("failures") or []))
        table.add_row(kind, str(r.get("at")), escape(verdict), escape(_numbers(kind, r)))
    console.print(table)
    disk = results.get("disk")
    if isinstance(disk, dict) and disk.get("disks"):
        jobs = Table("Disk", "fio job", "IOPS", "MiB/s", "p50 ms", "p99 ms")
        for d in disk["disks"]:
            for j in d.get("jobs") or []:
                jobs.add_row(
                    escape(str(d.get("name"))),
                    escape(str(j.get("job"))),
                    f"{j.get('iops') or 0:.0f}",
                    f"{j.get('bandwidth_mib_s') or 0:.1f}",
                    str(j.get("lat_p50_ms")),
                    str(j.get("lat_p99_ms")),
                )
        console.print(jobs)


def _numbers(kind: str, r: dict[str, Any]) -> str:
    if kind == "cpu":
        return (
            f"{r.get('tool')}, {r.get('cpus')} CPUs ({r.get('method')}), {r.get('duration_s')} s: "
            f"{r.get('bogo_ops_per_s') or 0:.1f} bogo-ops/s"
        )
    if kind == "memory":
        failed = ", ".join(map(str, r.get("failed_tests") or [])) or "none"
        size = f"{r.get('tested_mib')} MiB x {r.get('loops')}"
        return f"{r.get('tool')}: {size}, {r.get('tests')} tests, failed: {failed}"
    if kind == "disk":
        return f"{len(r.get('disks') or [])} disk(s), below"
    if kind == "network_serve":
        return (
            f"{r.get('tool')} served {r.get('client')} on {r.get('address')} port {r.get('port')}: "
            f"{r.get('received_mbps')} Mbit/s received"
        )
    return (
        f"{r.get('tool')} to {r.get('server')}: {r.get('received_mbps')} Mbit/s received "
        f"({r.get('sent_mbps')} sent), {r.get('retransmits')} retransmits"
    )
