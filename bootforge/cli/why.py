"""`bootforge node why NODE`: where the node's boot or deploy stands or stopped, and the likely cause.

Prints the server's diagnosis (GET /v1/nodes/{ident}/diagnosis, bootforge.conductor.diagnosis): the
verdict, the likely cause, and the timeline events that show it, the failing one marked. Exits 0 when
nothing is wrong (or the work is going on), 1 when the node failed or its wait has stalled.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from bootforge.cli.client import DEFAULT_URL, Api, UrlOpt, console

__all__ = ["print_diagnosis", "why"]

STATUS_STYLE = {"ok": "green", "in progress": "cyan", "stalled": "yellow", "failed": "red"}


def why(
    ident: str,
    url: UrlOpt = DEFAULT_URL,
    as_json: Annotated[bool, typer.Option("--json", help="print the whole diagnosis as JSON")] = False,
) -> None:
    """Where the node's boot or deploy stopped and the likely cause; exit 1 when something is wrong."""
    d = Api(url).call("GET", f"/v1/nodes/{ident}/diagnosis")
    if as_json:
        console.print_json(json.dumps(d))
    else:
        print_diagnosis(d)
    if d["wrong"]:
        raise typer.Exit(1)


def print_diagnosis(d: dict[str, Any]) -> None:
    name = escape(str(d.get("name") or d["node_uuid"]))
    target = f" -> {d['target_provision_state']}" if d.get("target_provision_state") else ""
    console.print(
        f"node {name} ({d['node_uuid']}): {escape(d['provision_state'] + target)}, "
        f"{escape(str(d.get('power_state') or 'power state unknown'))}"
        + (", in maintenance" if d.get("maintenance") else ""),
        highlight=False,
    )
    style = STATUS_STYLE.get(d["status"], "")
    # All on stdout, in reading order (the exit status says whether something is wrong).
    console.print(f"[{style}]{escape(d['status'])}:[/{style}] {escape(d['summary'])}", highlight=False)
    if d.get("cause"):
        console.print(f"[bold]likely cause:[/bold] {escape(d['cause'])}", highlight=False)
    evidence = d.get("evidence") or []
    if not evidence:
        return
    failing = (d.get("failing_event") or {}).get("uuid")
    console.print("evidence, from this attempt's timeline:", highlight=False)
    table = Table("", "Time", "Source", "Event")
    for e in evidence:
        mark = ">" if e["uuid"] == failing else ""
        severity = e.get("severity")
        row_style = (
            "bold red"
            if mark
            else ("red" if severity == "error" else "yellow" if severity == "warning" else "")
        )
        table.add_row(
            mark, str(e["created_at"])[:23], e.get("event_type") or "", escape(e["event"]), style=row_style
        )
    console.print(table)
