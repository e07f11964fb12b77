"""`bootforge lab`: a virtual rack of QEMU VMs that network-boot from a bootforge of their own."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from bootforge.cli.signals import exit_code, interrupt_on_signals
from bootforge.drivers.qemu_machine import QemuError
from bootforge.lab.lab import Lab, LabError, LabState
from bootforge.lab.netns import NetnsError
from bootforge.lab.racks import RackLab
from bootforge.lab.ramdisk import RamdiskError
from bootforge.ramdisk import RamdiskError as AgentRamdiskError

lab_app = typer.Typer(
    help="A virtual rack: a network namespace, bootforge serving on its bridge, QEMU VMs as nodes.",
    no_args_is_help=True,
)
console = Console()
err = Console(stderr=True)

DEFAULT_DIR = Path(os.environ.get("XDG_STATE_HOME", Path.home() / ".local/state")) / "bootforge-lab"
DirOpt = Annotated[
    Path, typer.Option("--dir", envvar="BOOTFORGE_LAB_DIR", help="where the lab keeps its files and state")
]


def _fail(e: Exception) -> typer.Exit:
    err.print(f"[red]lab:[/red] {escape(str(e))}")
    return typer.Exit(1)


@lab_app.command("up")
def up(
    vms: Annotated[int, typer.Option("--vms", help="how many VMs")] = 3,
    firmware: Annotated[
        str,
        typer.Option(
            help="bios, uefi (OVMF PXE), uefi-http, uefi-sb (Secure Boot enforced, TCG), arm64 (AAVMF on "
            "qemu-system-aarch64 -M virt, TCG), arm64-sb (the same, Secure Boot enforced) or mixed"
        ),
    ] = "bios",
    memory: Annotated[int, typer.Option(help="MiB per VM")] = 512,
    dhcp: Annotated[
        str,
        typer.Option(
            help="full: bootforge leases; proxy: dnsmasq leases; off: no DHCP at all (the VMs boot the "
            "ramdisk from virtual media with static addresses)"
        ),
    ] = "full",
    start: Annotated[bool, typer.Option(help="power the VMs on through the API")] = True,
    ramdisk: Annotated[
        str, typer.Option(help="agent: the deploy ramdisk; probe: a boot-chain check only")
    ] = "agent",
    bmc: Annotated[
        str,
        typer.Option(
            help="qemu: bootforge drives the VMs over QMP; ipmi / redfish: each VM sits behind an "
            "emulated BMC (pyghmi's IPMI server, sushy-tools' Redfish emulator) and is enrolled with "
            "that driver"
        ),
    ] = "qemu",
    ipv6: Annotated[
        bool,
        typer.Option(
            "--ipv6",
            help="an IPv6-only provisioning network (fd77::/64): bootforge's DHCPv6 and router "
            "advertisements with the Managed flag, TFTP/HTTP/API on [fd77::1]; no DHCPv4",
        ),
    ] = False,
    racks: Annotated[
        int,
        typer.Option(
            help="2 or more: a bridge per rack with its own serve --role netboot and --role conductor "
            "(conductor_group rackN), one --role api, --vms VMs per rack enrolled (not powered on); "
            "needs --database-url"
        ),
    ] = 1,
    database_url: Annotated[
        str,
        typer.Option(
            help="with --racks: the PostgreSQL database every process shares, reachable from inside the "
            "lab's namespace (by unix socket: postgresql+asyncpg://USER@/DB?host=/var/run/postgresql)"
        ),
    ] = "",
    directory: DirOpt = DEFAULT_DIR,
) -> None:
    """Create the lab: namespace + bridge, bootforge serve on it, N VMs enrolled as nodes.

    Interrupted while building (Ctrl-C, SIGTERM, SIGHUP), it removes what it made; once up, the lab
    stays until `bootforge lab down`.
    """
    try:
        with interrupt_on_signals():
            if racks > 1:
                lab: Lab = RackLab.up_racks(
                    directory, database_url, racks, vms, memory, say=lambda m: console.print(f"  {m}")
                )
            else:
                lab = Lab.up(
                    directory,
                    vms,
                    firmware,
                    memory,
                    dhcp,
                    start,
                    say=lambda m: console.print(f"  {m}"),
                    ramdisk=ramdisk,
                    bmc=bmc,
                    ipv6=ipv6,
                )
    except KeyboardInterrupt as e:
        with contextlib.suppress(OSError):  # after SIGHUP the terminal may be gone
            err.print("lab up interrupted: removed what it had made")
        raise typer.Exit(exit_code(e)) from None
    except (LabError, NetnsError, QemuError, RamdiskError, AgentRamdiskError) as e:
        raise _fail(e) from None
    env = lab.env()
    console.print(f"\n[green]lab up[/green] in {lab.dir} (namespace {lab.state.netns})")
    console.print(
        f"API: {lab.state.url} on this host (forwarded into the lab, where it is {lab.state.api_in_lab})"
    )
    if lab.state.bmc != "qemu":
        console.print(
            f"BMCs ({lab.state.bmc}, in the lab only): user admin, password {lab.state.bmc_password}; "
            "`bootforge lab status` lists them"
        )
    console.print("Use it with:")
    console.print("  export " + " ".join(f"{k}={v}" for k, v in env.items()), highlight=False, soft_wrap=True)
    console.print("  bootforge node list    bootforge node events lab-vm1    bootforge lab status")
    console.print(f"Serial consoles: {lab.dir}/vms/<vm>/console.log.  Remove it all: bootforge lab down")


@lab_app.command("down")
def down(directory: DirOpt = DEFAULT_DIR) -> None:
    """Remove everything the lab made: processes by PID, namespaces (bridge, taps), files."""
    try:
        lab = Lab(directory)
    except LabError as e:
        raise _fail(e) from None
    for item in lab.down():
        console.print(f"  removed {item}")
    console.print("[green]lab down[/green]")


@lab_app.command("status")
def status(
    directory: DirOpt = DEFAULT_DIR,
    lines: Annotated[int, typer.Option(help="console lines per VM")] = 5,
) -> None:
    """The VMs, their power and provision state, and the tail of each serial console."""
    try:
        lab = Lab(directory)
    except LabError as e:
        raise _fail(e) from None
    rows = lab.status(lines)
    table = Table("VM", "Firmware", "MAC", "Node", "BMC", "Power", "Provision state")
    for r in rows:
        table.add_row(
            r["name"], r["firmware"], r["mac"], r["node"] or "", r["bmc"], r["power"], r["provision"]
        )
    console.print(f"lab in {lab.dir}: API {lab.state.url}, namespace {lab.state.netns}")
    console.print(table)
    for r in rows:
        console.print(f"[bold]{r['name']}[/bold] console:")
        for line in r["console"] or ["(empty)"]:
            console.print(f"  {escape(line)}", highlight=False)


@lab_app.command("env")
def env(directory: DirOpt = DEFAULT_DIR) -> None:
    """Print `export` lines for the lab's API (eval "$(bootforge lab env)")."""
    try:
        lab = Lab(directory, LabState.load(directory.resolve()))
    except LabError as e:
        raise _fail(e) from None
    for k, v in lab.env().items():
        print(f"export {k}={v}")
