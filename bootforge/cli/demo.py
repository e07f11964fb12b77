"""`bootforge demo`: the virtual rack end to end, from powered off to running the OS, with live progress.

It builds a lab (bootforge serving on a bridge in a network namespace, QEMU VMs enrolled as `qemu`
nodes, bootforge's deploy ramdisk built from Debian packages), adds the lab's sample OS to the image
catalogue, and takes every node through the product's whole path: inspect (the VM network-boots the
ramdisk and its agent reports the hardware), provide (disks cleaned), deploy (the agent streams the
image and a config drive with user data to the disk, the VM is handed over to its disk and boots it).
It shows each node's state, latest timeline event and console line as they change, then keeps the API
up for the user to explore until Ctrl-C, SIGTERM or SIGHUP (the terminal closed), when it removes
everything it made.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.table import Table

from bootforge.cli.lab import DEFAULT_DIR, DirOpt
from bootforge.cli.signals import Interrupted, exit_code, interrupt_on_signals
from bootforge.drivers.qemu_machine import QemuError
from bootforge.lab import sample_os
from bootforge.lab.lab import Lab, LabError
from bootforge.lab.netns import NetnsError
from bootforge.lab.ramdisk import RamdiskError
from bootforge.ramdisk import RamdiskError as AgentRamdiskError

console = Console()
# The sample OS image each firmware boots: syslinux on an MBR disk, systemd-boot on a GPT one.
IMAGES = {"bios": "sample-os-bios", "uefi": "sample-os-uefi"}
USER_DATA = "hello from the bootforge demo"


def demo(
    vms: Annotated[int, typer.Option("--vms", help="how many VMs")] = 2,
    firmware: Annotated[
        str, typer.Option(help="bios, uefi (OVMF PXE), uefi-http or mixed (one of each in turn)")
    ] = "mixed",
    bmc: Annotated[
        str, typer.Option(help="qemu (QMP), or each VM behind an emulated ipmi or redfish BMC")
    ] = "qemu",
    directory: DirOpt = DEFAULT_DIR,
) -> None:
    """VMs network-boot bootforge's ramdisk, are inspected, cleaned and deployed with an OS, live."""
    try:
        with interrupt_on_signals():
            _run(vms, firmware, bmc, directory)
    except KeyboardInterrupt as e:  # while building: Lab.up has removed what it made
        raise typer.Exit(exit_code(e)) from None


def _run(vms: int, firmware: str, bmc: str, directory: Path) -> None:
    console.print("[bold]bootforge demo[/bold]: building a virtual rack (Ctrl-C removes it)")
    try:
        missing = sorted(set(sample_os.missing_tools("bios")) | set(sample_os.missing_tools("uefi")))
        if missing:
            raise LabError(f"the sample OS images need {', '.join(missing)}")
        console.print("  building the sample OS images (cached after the first time)")
        images = {kind: sample_os.build_test_os(firmware=kind) for kind in IMAGES}
        lab = Lab.up(
            directory, vms, firmware, 768, "full", start=False, say=lambda m: console.print(f"  {m}"), bmc=bmc
        )
    except (LabError, NetnsError, QemuError, RamdiskError, AgentRamdiskError, sample_os.TestOsError) as e:
        console.print(f"[red]demo:[/red] {escape(str(e))}")
        raise typer.Exit(1) from None
    interrupted: BaseException | None = None
    try:
        with lab.client(timeout=120) as api:
            for kind, name in IMAGES.items():
                _ok(api.post("/v1/images", json={"name": name, "source": str(images[kind])}), 201)
                console.print(f"  image {name} added to the catalogue")
            nodes = {rec.node: rec.firmware for rec in lab.state.vms if rec.node}
            _step(
                lab,
                api,
                nodes,
                "inspect",
                "manageable",
                "inspect: each VM boots the ramdisk, its agent reports",
            )
            _step(
                lab,
                api,
                nodes,
                "provide",
                "available",
                "provide: the same agent cleans the disks (fast track)",
            )
            for node, fw in nodes.items():
                image = IMAGES["bios" if fw == "bios" else "uefi"]
                patch = [{"op": "add", "path": "/instance_info/image_source", "value": image}]
                _ok(api.patch(f"/v1/nodes/{node}", json=patch), 200)
            _step(
                lab, api, nodes, "active", "active",
                "deploy: image + config drive streamed to disk, then the VM boots from it",
                {"configdrive": {"user_data": USER_DATA}},
            )  # fmt: skip
            _explain(lab)
            _watch(lab, api, until=lambda rows: False, title="deployed: the consoles show the sample OS")
    except KeyboardInterrupt as e:
        interrupted = e
    except (LabError, httpx.HTTPError) as e:
        _say(f"[red]demo:[/red] {escape(str(e))}")
    finally:
        _say("\nremoving the lab ...")
        for item in lab.down():
            _say(f"  removed {item}")
    # Ctrl-C is the demo's usual end; SIGTERM and SIGHUP report the signal, as a shell expects.
    if isinstance(interrupted, Interrupted):
        raise typer.Exit(exit_code(interrupted))


def _say(message: str) -> None:
    # After SIGHUP the terminal may be gone (EIO); what is left to do is removing the lab.
    with contextlib.suppress(OSError):
        console.print(message)


def _step(
    lab: Lab,
    api: httpx.Client,
    nodes: dict[str, str],
    verb: str,
    want: str,
    title: str,
    body: dict[str, Any] | None = None,
) -> None:
    for node in nodes:
        _put(api, f"/v1/nodes/{node}/states/provision", {"target": verb, **(body or {})})
    names = set(nodes)

    def done(rows: list[dict[str, Any]]) -> bool:
        mine = [r for r in rows if r["node"] in names]
        failed = [r for r in mine if "failed" in r["provision_state"]]
        if failed:
            raise LabError(f"{failed[0]['name']} is {failed[0]['provision_state']}: {failed[0]['event']}")
        return all(r["provision_state"] == want and not r["reservation"] for r in mine)

    _watch(lab, api, until=done, title=title, limit=900)


def _ok(r: httpx.Response, status: int) -> None:
    if r.status_code != status:
        raise LabError(f"{r.request.method} {r.request.url.path} failed ({r.status_code}): {r.text}")


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
        "  .venv/bin/bootforge node inventory lab-vm1      .venv/bin/bootforge image list\n"
        f"Serial consoles: {lab.dir}/vms/<vm>/console.log (the sample OS printed its user data there).\n"
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
