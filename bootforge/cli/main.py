"""The `bootforge` command: `serve` runs the service; every other command talks to its API over HTTP."""

from __future__ import annotations

import asyncio
import json
import logging
import os
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.markup import escape
from rich.table import Column, Table

from bootforge.cli.client import DEFAULT_URL, Api, UrlOpt, console, err
from bootforge.conductor import states

app = typer.Typer(
    help="bootforge: bare metal provisioning, from powered off to running the OS asked for.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
node_app = typer.Typer(help="Enrol and drive machines (nodes).", no_args_is_help=True)
app.add_typer(node_app, name="node")
# The virtual rack (bootforge lab up/down/status), in its own module.
from bootforge.cli.demo import demo  # noqa: E402
from bootforge.cli.lab import lab_app  # noqa: E402

app.add_typer(lab_app, name="lab")
app.command("demo")(demo)


@app.command()
def serve(
    config: Annotated[Path | None, typer.Option(help="TOML settings file")] = None,
    state_dir: Annotated[Path | None, typer.Option(help="where the database and files live")] = None,
    listen: Annotated[str | None, typer.Option(help="API address, HOST:PORT")] = None,
    database_url: Annotated[
        str | None, typer.Option(help="SQLAlchemy URL; SQLite in state dir if unset")
    ] = None,
    host: Annotated[str | None, typer.Option(help="this conductor's name (unique per process)")] = None,
    role: Annotated[
        str | None,
        typer.Option(
            help="all (default: API, conductor and netboot in one process), api (REST API only), "
            "conductor (periodics and node work, no API), netboot (DHCP/TFTP/HTTP boot of its "
            "conductor_group's nodes)"
        ),
    ] = None,
) -> None:
    """Run the API, conductor and netboot in one process, or one role per process with --role."""
    from bootforge.cli.serve import serve as run
    from bootforge.config import Settings

    if config is not None:
        os.environ["BOOTFORGE_CONFIG"] = str(config)
    flags = {
        k: v
        for k, v in {
            "state_dir": state_dir,
            "listen": listen,
            "database_url": database_url,
            "host": host,
            "role": role,
        }.items()
        if v is not None
    }
    try:
        settings = Settings.model_validate(flags)
    except ValueError as e:
        err.print(f"[red]invalid settings:[/red] {e}")
        raise typer.Exit(2) from None
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # Migrations run at every start; their per-step chatter is noise in an operator's log.
    logging.getLogger("alembic").setLevel(logging.WARNING)
    asyncio.run(run(settings))


@app.command("states")
def states_cmd(dot: Annotated[bool, typer.Option(help="print Graphviz source")] = False) -> None:
    """Show the provision state machine (from the same table the conductor runs)."""
    if dot:
        print(states.to_dot())
        return
    table = Table("from", "event", "to")
    for (src, event), dst in sorted(states.TRANSITIONS.items()):
        table.add_row(src, event, dst)
    console.print(table)


@node_app.command("list")
def node_list(
    url: UrlOpt = DEFAULT_URL,
    state: Annotated[str | None, typer.Option(help="only nodes in this provision state")] = None,
) -> None:
    """List nodes."""
    api = Api(url)
    query = "?fields=uuid,name,provision_state,power_state,maintenance,resource_class,driver,last_error"
    if state:
        query += f"&provision_state={state}"
    nodes: list[dict[str, Any]] = []
    path: str | None = f"/v1/nodes{query}"
    while path:
        page = api.call("GET", path)
        nodes += page["nodes"]
        path = page.get("next", "").replace(str(api.http.base_url), "") or None
    # The UUID is what the next command needs: never cut it, even in a narrow or piped output.
    uuid_column = Column("UUID", no_wrap=True, min_width=36)
    table = Table(uuid_column, "Name", "Provision state", "Power", "Maint.", "Class", "Driver", "Last error")
    for n in nodes:
        table.add_row(
            n["uuid"],
            n.get("name") or "",
            n["provision_state"],
            n.get("power_state") or "",
            "yes" if n["maintenance"] else "",
            n.get("resource_class") or "",
            n["driver"],
            (n.get("last_error") or "")[:60],
        )
    console.print(table)


@node_app.command("show")
def node_show(ident: str, url: UrlOpt = DEFAULT_URL) -> None:
    """Show one node (secrets are masked by the API)."""
    node = Api(url).call("GET", f"/v1/nodes/{ident}")
    table = Table("Field", "Value", show_header=False)
    for key in sorted(k for k in node if k not in ("links", "ports", "states", "portgroups")):
        value = node[key]
        table.add_row(key, json.dumps(value) if isinstance(value, dict | list) else str(value))
    console.print(table)


@node_app.command("create")
def node_create(
    driver: Annotated[str, typer.Option(help="hardware type, e.g. fake-hardware")],
    name: Annotated[str | None, typer.Option()] = None,
    mac: Annotated[list[str] | None, typer.Option(help="MAC of a NIC (repeatable): creates a port")] = None,
    driver_info: Annotated[str | None, typer.Option(help="JSON object")] = None,
    resource_class: Annotated[str | None, typer.Option()] = None,
    url: UrlOpt = DEFAULT_URL,
) -> None:
    """Enrol a machine, with a port per MAC."""
    api = Api(url)
    body: dict[str, Any] = {"driver": driver}
    if name:
        body["name"] = name
    if resource_class:
        body["resource_class"] = resource_class
    if driver_info:
        body["driver_info"] = json.loads(driver_info)
    node = api.call("POST", "/v1/nodes", body, ok=(201,))
    try:
        for address in mac or []:
            api.call("POST", "/v1/ports", {"node_uuid": node["uuid"], "address": address}, ok=(201,))
    except typer.Exit:
        # All or nothing: a node without the NIC asked for would not boot, and its name would block a retry.
        api.call("DELETE", f"/v1/nodes/{node['uuid']}", ok=(204,))
        err.print(f"node {node['uuid']} was not kept: its ports could not all be created")
        raise
    console.print(f"created node [bold]{node['uuid']}[/bold] ({node['provision_state']})")


# Where each verb's work ends when it succeeds; ending anywhere else (verification failing sends a
# node back to enroll, not to a failed state) is a failure the user must see.
VERB_RESULT = {
    "inspect": states.MANAGEABLE,
    "manage": states.MANAGEABLE,
    "provide": states.AVAILABLE,
    "active": states.ACTIVE,
    "deleted": states.AVAILABLE,
}


def _provision(
    ident: str, verb: str, url: str, wait: float | None, body: dict[str, Any] | None = None
) -> None:
    api = Api(url)
    api.call("PUT", f"/v1/nodes/{ident}/states/provision", {"target": verb, **(body or {})}, ok=(202,))
    if wait is None:
        console.print(f"{verb} requested for {ident}")
        return
    _wait(api, ident, wait, VERB_RESULT[verb])


def _wait(api: Api, ident: str, timeout: float, expected: str) -> None:
    # The step, and the agent's bytes written, as they go (cli/progress.py).
    from bootforge.cli.progress import wait_for

    wait_for(api, ident, timeout, expected)


WaitOpt = Annotated[float | None, typer.Option("--wait", help="wait up to N seconds (0: an hour)")]


@node_app.command("manage")
def node_manage(ident: str, url: UrlOpt = DEFAULT_URL, wait: WaitOpt = None) -> None:
    """enroll/available -> manageable (verifies BMC access)."""
    _provision(ident, "manage", url, wait)


@node_app.command("provide")
def node_provide(ident: str, url: UrlOpt = DEFAULT_URL, wait: WaitOpt = None) -> None:
    """manageable -> available (cleans first)."""
    _provision(ident, "provide", url, wait)


@node_app.command("inspect")
def node_inspect(ident: str, url: UrlOpt = DEFAULT_URL, wait: WaitOpt = None) -> None:
    """manageable -> inspecting -> manageable: the agent reports CPUs, memory, disks and NICs."""
    _provision(ident, "inspect", url, wait)


@node_app.command("inventory")
def node_inventory(
    ident: str,
    url: UrlOpt = DEFAULT_URL,
    as_json: Annotated[bool, typer.Option("--json", help="print the whole inventory as JSON")] = False,
) -> None:
    """What the last inspection found."""
    data = Api(url).call("GET", f"/v1/nodes/{ident}/inventory")
    inv = data["inventory"]
    if as_json:
        console.print_json(json.dumps(data))
        return
    cpu, mem, system = inv.get("cpu") or {}, inv.get("memory") or {}, inv.get("system_vendor") or {}
    console.print(
        f"{system.get('manufacturer')} {system.get('product_name')} (serial {system.get('serial_number')}), "
        f"boot mode {(inv.get('boot') or {}).get('current_boot_mode')}"
    )
    console.print(
        f"{cpu.get('count')} x {cpu.get('model_name')} ({cpu.get('architecture')}), "
        f"{mem.get('physical_mb')} MiB"
    )
    disks = Table("Disk", "Size GiB", "Model", "Serial", "WWN", "Rotational")
    for d in inv.get("disks") or []:
        disks.add_row(
            d.get("name"),
            f"{(d.get('size') or 0) / 1024**3:.1f}",
            str(d.get("model")),
            str(d.get("serial")),
            str(d.get("wwn")),
            str(d.get("rotational")),
        )
    console.print(disks)
    nics = Table("NIC", "MAC", "IPv4", "Speed Mb/s", "LLDP neighbour")
    for n in inv.get("interfaces") or []:
        lldp = n.get("lldp") or {}
        neighbour = (
            f"{lldp.get('system_name') or lldp.get('chassis_id')} {lldp.get('port_id')}" if lldp else ""
        )
        nics.add_row(
            n.get("name"),
            n.get("mac_address"),
            str(n.get("ipv4_address")),
            str(n.get("speed_mbps")),
            neighbour,
        )
    console.print(nics)


@node_app.command("deploy")
def node_deploy(
    ident: str,
    url: UrlOpt = DEFAULT_URL,
    wait: WaitOpt = None,
    image: Annotated[
        str | None, typer.Option(help="image to write: a name from `bootforge image list`, or a URL")
    ] = None,
    user_data: Annotated[
        Path | None, typer.Option(help="file whose content goes into the config drive as user_data")
    ] = None,
    config_drive: Annotated[str | None, typer.Option(help="JSON or base64 config drive")] = None,
) -> None:
    """available -> active."""
    api = Api(url)
    if image:
        patch = [{"op": "add", "path": "/instance_info/image_source", "value": image}]
        api.call("PATCH", f"/v1/nodes/{ident}", patch)
    body: dict[str, Any] = {}
    if config_drive:
        body["configdrive"] = json.loads(config_drive) if config_drive.startswith("{") else config_drive
    if user_data is not None:
        given = body.get("configdrive")
        drive: dict[str, Any] = given if isinstance(given, dict) else {}
        body["configdrive"] = {**drive, "user_data": user_data.read_text()}
    _provision(ident, "active", url, wait, body)


@node_app.command("undeploy")
def node_undeploy(ident: str, url: UrlOpt = DEFAULT_URL, wait: WaitOpt = None) -> None:
    """active -> available (tears down, then cleans)."""
    _provision(ident, "deleted", url, wait)


@node_app.command("power")
def node_power(
    ident: str,
    target: Annotated[str, typer.Argument(help="on, off, reboot, soft-off, soft-reboot")],
    url: UrlOpt = DEFAULT_URL,
) -> None:
    """Change the power state."""
    names = {
        "on": "power on",
        "off": "power off",
        "reboot": "rebooting",
        "soft-off": "soft power off",
        "soft-reboot": "soft rebooting",
    }
    if target not in names:
        err.print(f"[red]unknown power target {target!r}; use one of {', '.join(names)}[/red]")
        raise typer.Exit(2)
    Api(url).call("PUT", f"/v1/nodes/{ident}/states/power", {"target": names[target]}, ok=(202,))
    console.print(f"{names[target]} requested for {ident}")


@node_app.command("bmc")
def node_bmc(
    ident: str,
    url: UrlOpt = DEFAULT_URL,
    as_json: Annotated[bool, typer.Option("--json", help="print the whole answer as JSON")] = False,
) -> None:
    """Ask the node's BMC, now: do its credentials work, and what does it offer? Exit 1 if it cannot."""
    api = Api(url)
    # The server bounds the BMC's answer (bmc_report_timeout); wait a little longer than it may.
    api.http.timeout = httpx.Timeout(660)
    r = api.call("GET", f"/v1/nodes/{ident}/bmc")
    if as_json:
        console.print_json(json.dumps(r))
    else:
        _print_bmc(r)
    if not r["reachable"]:
        raise typer.Exit(1)


def _print_bmc(r: dict[str, Any]) -> None:
    ifaces = r.get("interfaces") or {}
    console.print(
        f"node {escape(str(r.get('name') or r['node_uuid']))} ({r['node_uuid']}), driver {r['driver']}, "
        f"power {ifaces.get('power')}, management {ifaces.get('management')}"
    )
    if not r["reachable"]:
        err.print(f"[red]BMC not usable:[/red] {escape(str(r['detail']))}")
        return
    console.print(f"[green]BMC answers:[/green] {escape(str(r['detail']))}  ({r['seconds']:.2f} s)")

    def listed(v: list[str] | None) -> str:
        return "(not known)" if v is None else ", ".join(v) or "none"

    secure = r.get("secure_boot")
    table = Table("", "", show_header=False)
    for label, value in (
        ("Power state", r.get("power_state") or "(not known)"),
        ("Boot devices", listed(r.get("boot_devices"))),
        ("Boot modes", listed(r.get("boot_modes"))),
        ("Virtual media", listed(r.get("virtual_media"))),
        ("Secure Boot", "no control" if secure is None else ("on" if secure else "off")),
        ("Vendor", r.get("vendor") or "(not known)"),
        ("Model", r.get("model") or "(not known)"),
        ("Firmware", r.get("firmware") or "(not known)"),
        *((str(k), json.dumps(v) if isinstance(v, dict | list) else str(v)) for k, v in r["extra"].items()),
    ):
        table.add_row(label, escape(value))
    console.print(table)


@node_app.command("delete")
def node_delete(ident: str, url: UrlOpt = DEFAULT_URL) -> None:
    """Remove a node (enroll, manageable, available or in maintenance)."""
    Api(url).call("DELETE", f"/v1/nodes/{ident}", ok=(204,))
    console.print(f"deleted {ident}")


@node_app.command("events")
def node_events(
    ident: str,
    url: UrlOpt = DEFAULT_URL,
    limit: Annotated[int, typer.Option(help="newest N events")] = 50,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="keep printing new events")] = False,
) -> None:
    """The node's timeline: state changes, power actions, steps, netboot fetches and errors."""
    api = Api(url)
    if follow:
        from bootforge.cli.events import follow as follow_events

        follow_events(api, ident, limit)
        return
    rows = api.call("GET", f"/v1/nodes/{ident}/history?detail=true")["history"][-limit:]
    table = Table("Time", "Severity", "Type", "Event")
    for e in rows:
        style = "red" if e["severity"] == "error" else ("yellow" if e["severity"] == "warning" else "")
        table.add_row(
            str(e["created_at"])[:23], e["severity"], e.get("event_type") or "", e["event"], style=style
        )
    console.print(table)


from bootforge.cli.images import image_app  # noqa: E402
from bootforge.cli.ramdisk import ramdisk_app  # noqa: E402

app.add_typer(image_app, name="image")
app.add_typer(ramdisk_app, name="ramdisk")

from bootforge.cli.secrets import secrets_app  # noqa: E402

app.add_typer(secrets_app, name="secrets")

from bootforge.cli.discovery import discovery_app  # noqa: E402
from bootforge.cli.fleet import fleet_app  # noqa: E402

app.add_typer(fleet_app, name="fleet")
app.add_typer(discovery_app, name="discovery")

from bootforge.cli.burnin import burnin  # noqa: E402
from bootforge.cli.why import why  # noqa: E402

node_app.command("why")(why)
node_app.command("burnin")(burnin)


def main() -> None:
    app()
