"""`bootforge discovery ...`: discovery status and the discovery rules (/v1/discovery_rules).

A rule from options: conditions with --if "FIELD OP VALUE" (VALUE read as JSON when it is JSON: 4,
true, null; else a string), then what to set. Or the whole rule as JSON with --file. The server
validates it and names the field that is wrong.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

import typer
from rich.markup import escape
from rich.table import Table

from bootforge.cli.client import DEFAULT_URL, Api, UrlOpt, console, err

discovery_app: typer.Typer = typer.Typer(
    help="Discovery of unknown machines: status and discovery rules.", no_args_is_help=True
)
rule_app: typer.Typer = typer.Typer(
    help="Discovery rules: conditions on the inventory -> driver, driver_info, resource class, traits, name.",
    no_args_is_help=True,
)
discovery_app.add_typer(rule_app, name="rule")


@contextmanager
def _api(url: str) -> Iterator[Api]:
    api = Api(url)
    try:
        yield api
    finally:
        api.http.close()


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse_condition(text: str) -> dict[str, Any]:
    """`inventory.cpu.count gt 4` -> {"field", "op", "value"}; `FIELD exists` has no value."""
    parts = text.strip().split(None, 2)
    if len(parts) == 2 and parts[1] == "exists":
        return {"field": parts[0], "op": "exists", "value": True}
    if len(parts) != 3:
        err.print(f"[red]--if {escape(text)!r}: write FIELD OP VALUE, e.g. 'inventory.cpu.count gt 4'[/red]")
        raise typer.Exit(2)
    return {"field": parts[0], "op": parts[1], "value": _value(parts[2])}


def _pairs(option: str, items: list[str]) -> list[tuple[str, Any]]:
    out = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            err.print(f"[red]{option} {escape(item)!r}: write KEY=VALUE[/red]")
            raise typer.Exit(2)
        out.append((key, _value(value) if option == "--property" else value))
    return out


@rule_app.command("add")
def add(
    name: Annotated[str | None, typer.Argument(help="the rule's name (unique)")] = None,
    priority: Annotated[
        int, typer.Option("--priority", help="higher runs first; the first to set a field wins")
    ] = 0,
    match: Annotated[str, typer.Option("--match", help="all | any of the conditions")] = "all",
    conditions: Annotated[
        list[str] | None,
        typer.Option(
            "--if", help="FIELD OP VALUE, OP one of eq ne lt gt contains matches exists (repeatable)"
        ),
    ] = None,
    driver: Annotated[str | None, typer.Option("--driver", help="set the driver")] = None,
    driver_info: Annotated[
        list[str] | None,
        typer.Option("--driver-info", help="KEY=VALUE into driver_info; VALUE may be a {template}"),
    ] = None,
    resource_class: Annotated[str | None, typer.Option("--resource-class")] = None,
    traits: Annotated[list[str] | None, typer.Option("--trait", help="add a trait (repeatable)")] = None,
    node_name: Annotated[
        str | None,
        typer.Option("--name-pattern", help="e.g. 'rack1-{inventory.system_vendor.serial_number}'"),
    ] = None,
    properties: Annotated[
        list[str] | None, typer.Option("--property", help="KEY=VALUE into properties")
    ] = None,
    description: Annotated[str | None, typer.Option("--description")] = None,
    from_file: Annotated[Path | None, typer.Option("--file", help="the whole rule as JSON")] = None,
    url: UrlOpt = DEFAULT_URL,
) -> None:
    """Create a discovery rule."""
    if from_file is not None:
        try:
            body: dict[str, Any] = json.loads(from_file.read_text())
        except (OSError, ValueError) as e:
            err.print(f"[red]--file {from_file}: {escape(str(e))}[/red]")
            raise typer.Exit(2) from None
    else:
        actions: list[dict[str, Any]] = []
        if driver:
            actions.append({"action": "set-driver", "value": driver})
        actions += [
            {"action": "set-driver-info", "field": k, "value": v}
            for k, v in _pairs("--driver-info", driver_info or [])
        ]
        if resource_class:
            actions.append({"action": "set-resource-class", "value": resource_class})
        actions += [{"action": "add-trait", "value": t} for t in traits or []]
        if node_name:
            actions.append({"action": "set-name", "value": node_name})
        actions += [
            {"action": "set-property", "field": k, "value": v}
            for k, v in _pairs("--property", properties or [])
        ]
        body = {
            "priority": priority,
            "match": match,
            "conditions": [parse_condition(c) for c in conditions or []],
            "actions": actions,
        }
        if description:
            body["description"] = description
    if name:
        body["name"] = name
    with _api(url) as api:
        rule = api.call("POST", "/v1/discovery_rules", body, ok=(201,))
    console.print(f"discovery rule {escape(rule['name'] or '')} {rule['uuid']} created")


def _describe(c: dict[str, Any]) -> str:
    return f"{c['field']} {c['op']}" + (
        "" if c["op"] == "exists" and c["value"] is True else f" {json.dumps(c['value'])}"
    )


def _action_text(a: dict[str, Any]) -> str:
    where = f" {a['field']}" if a.get("field") else ""
    return f"{a['action']}{where} {json.dumps(a['value'])}"


@rule_app.command("list")
def list_rules(
    as_json: Annotated[bool, typer.Option("--json", help="the API's JSON")] = False, url: UrlOpt = DEFAULT_URL
) -> None:
    """The rules, in the order they run."""
    with _api(url) as api:
        rules = api.call("GET", "/v1/discovery_rules")["rules"]
    if as_json:
        console.print_json(json.dumps(rules))
        return
    table = Table("priority", "name", "uuid", "when", "then")
    for r in rules:
        joiner = " and " if r["match"] == "all" else " or "
        table.add_row(
            str(r["priority"]),
            escape(r["name"] or ""),
            r["uuid"],
            escape(joiner.join(_describe(c) for c in r["conditions"]) or "always"),
            escape("; ".join(_action_text(a) for a in r["actions"])),
        )
    console.print(table)


@rule_app.command("show")
def show(ident: Annotated[str, typer.Argument(help="rule name or UUID")], url: UrlOpt = DEFAULT_URL) -> None:
    """One rule as JSON."""
    with _api(url) as api:
        console.print_json(json.dumps(api.call("GET", f"/v1/discovery_rules/{quote(ident, safe='')}")))


@rule_app.command("delete")
def delete(
    ident: Annotated[str, typer.Argument(help="rule name or UUID")], url: UrlOpt = DEFAULT_URL
) -> None:
    """Delete a rule."""
    with _api(url) as api:
        api.call("DELETE", f"/v1/discovery_rules/{quote(ident, safe='')}", ok=(204,))
    console.print(f"discovery rule {escape(ident)} deleted")


@discovery_app.command("status")
def status(url: UrlOpt = DEFAULT_URL) -> None:
    """Whether discovery is on, on which subnets, and what it did since the server started."""
    with _api(url) as api:
        s = api.call("GET", "/v1/discovery")
    state = "[green]on[/green]" if s["enabled"] else "off"
    console.print(f"discovery {state}; subnets: {escape(', '.join(s['subnets']) or 'none')}")
    console.print(
        f"default driver {escape(s['driver'])}; at most {s['max_enrolments_per_minute']} enrolments "
        f"per minute; {s['rules']} rule{'' if s['rules'] == 1 else 's'}"
    )
    console.print(", ".join(f"{k.replace('_', ' ')}: {v}" for k, v in s["counts"].items()) + " (since start)")
    if s.get("last_refusal"):
        console.print(f"last refused report: {escape(s['last_refusal'])}")
