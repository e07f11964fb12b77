"""`bootforge demo`: the virtual rack end to end, as far as bootforge goes today, with live progress.

It builds a lab (bootforge serving on a bridge in a network namespace, QEMU VMs enrolled as `qemu`
nodes), takes every node through what the product does today (manage: bootforge proves it controls
the VM; power on: the VM network-boots from bootforge's DHCP, TFTP and HTTP), shows each node's
state, latest timeline event and console line as they change, and keeps the API up for the user to
explore until Ctrl-C, when it removes everything it made.
"""

from __future__ import annotations

import time
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.table import Table

from bootforge.cli.lab import DEFAULT_DIR, DirOpt
from bootforge.lab.lab import Lab, LabError
from bootforge.lab.netns import NetnsError
from bootforge.lab.qemu import QemuError
from bootforge.lab.ramdisk import RamdiskError

console = Console()


def demo(
    vms: Annotated[int, typer.Option("--vms", help="how many VMs")] = 3,
    firmware: Annotated[str, typer.Option(help="bios, uefi, uefi-http or mixed")] = "mixed",
    directory: DirOpt = DEFAULT_DIR,
) -> None:
    """A lab of VMs (one per firmware), enrolled, managed and network-booted from bootforge, live."""
    console.print("[bold]bootforge demo[/bold]: building a virtual rack (Ctrl-C removes it)")
    try:
        lab = Lab.up(
            directory, vms, firmware, 512, "full", start=False, say=lambda m: console.print(f"  {m}")
        )
    except (LabError, NetnsError, QemuError, RamdiskError) as e:
        console.print(f"[red]demo:[/red] {escape(str(e))}")
        raise typer.Exit(1) from None
    try:
        with lab.client() as api:
            nodes = [rec.node for rec in lab.state.vms if rec.node]
            for node in nodes:
                state = api.get(f"/v1/nodes/{node}?fields=provision_state").json()["provision_state"]
                if state == "enroll":
                    _put(api, f"/v1/nodes/{node}/states/provision", {"target": "manage"})
            _watch(
                lab,
                api,
                until=lambda rows: all(r["provision_state"] == "manageable" for r in rows),
                title="manage: bootforge proves it controls each VM (QMP)",
                limit=60,
            )
            for node in nodes:
                _put(api, f"/v1/nodes/{node}/states/power", {"target": "power on"})
            _explain(lab)
            _watch(lab, api, until=lambda rows: False, title="power on: the VMs network-boot from bootforge")
    except KeyboardInterrupt:
        pass
    except (LabError, httpx.HTTPError) as e:
        console.print(f"[red]demo:[/red] {escape(str(e))}")
    finally:
        console.print("\nremoving the lab ...")
        for item in lab.down():
            console.print(f"  removed {item}")


def _put(api: httpx.Client, path: str, body: dict[str, Any]) -> None:
    r = api.put(path, json=body)
    if r.status_code not in (202, 204):
        raise LabError(f"PUT {path} failed ({r.status_code}): {r.text}")


def _explain(lab: Lab) -> None:
    env = " ".join(f"{k}={v}" for k, v in lab.env().items())
    console.print(
        f"\nThe API stays up at {lab.state.url}. In another shell:\n"
        f"  export {env}\n"
        "  .venv/bin/bootforge node list      .venv/bin/bootforge node events lab-vm1\n"
        "Each VM gets an address and iPXE from bootforge, then its boot script; a manageable node is\n"
        "told it has nothing to boot until it is deployed (deploy by the ramdisk agent comes next).\n"
        "Press Ctrl-C to remove the lab.\n",
        highlight=False,
        soft_wrap=True,
    )


def _watch(lab: Lab, api: httpx.Client, until: Any, title: str, limit: float = 0) -> None:
    deadline = time.monotonic() + limit if limit else None
    with Live(console=console, refresh_per_second=2) as live:
        while True:
            rows = _rows(lab, api)
            live.update(_table(rows, title))
            if until(rows) or (deadline and time.monotonic() > deadline):
                return
            time.sleep(1)


def _rows(lab: Lab, api: httpx.Client) -> list[dict[str, Any]]:
    rows = []
    for r in lab.status(console_lines=1):
        event = ""
        if r["node"]:
            history = api.get(f"/v1/nodes/{r['node']}/history?detail=true")
            if history.status_code == 200 and history.json()["history"]:
                last = history.json()["history"][-1]
                event = f"{last['event_type']}: {last['event']}"
        rows.append({**r, "provision_state": r["provision"], "event": event})
    return rows


def _table(rows: list[dict[str, Any]], title: str) -> Table:
    table = Table("VM", "Firmware", "Provision", "Power", "Latest event", "Console", title=title)
    for r in rows:
        console_line = (r["console"] or [""])[-1]
        table.add_row(
            r["name"],
            r["firmware"],
            r["provision_state"],
            r["power"],
            escape(r["event"][:60]),
            escape(console_line[-50:]),
        )
    return table
