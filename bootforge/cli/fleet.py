"""`bootforge fleet ...`: rolling re-provisioning over the API (/v1/rollouts).

The rollout runs in the conductor: this command starts it and returns (or follows it with --wait);
closing the terminal stops nothing, and `fleet status` shows where it stands from any machine.
Drain and undrain hooks are named here, defined in the server's configuration (rollouts.hooks): the
API never takes a command to run.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any
from urllib.parse import quote

import typer
from rich.markup import escape
from rich.table import Table

from bootforge.cli.client import DEFAULT_URL, Api, UrlOpt, console, err

fleet_app: typer.Typer = typer.Typer(
    help="Rolling re-provisioning of active nodes in batches (rollouts).", no_args_is_help=True
)

SELECTOR_KEYS = {"resource_class", "conductor_group", "name_prefix", "trait"}
FINISHED = ("done", "failed", "aborted")  # not "aborting": its rebuilds under way still finish


@contextmanager
def _api(url: str) -> Iterator[Api]:
    api = Api(url)
    try:
        yield api
    finally:
        api.http.close()


def parse_selector(text: str) -> dict[str, Any]:
    """`resource_class=web,name_prefix=rack1-,trait=CUSTOM_GPU` -> the API's selector object."""
    selector: dict[str, Any] = {}
    for part in (p.strip() for p in text.split(",") if p.strip()):
        key, sep, value = part.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in SELECTOR_KEYS or not value.strip():
            err.print(
                f"[red]--selector: {escape(part)!r} is not KEY=VALUE with KEY one of "
                f"{', '.join(sorted(SELECTOR_KEYS))}[/red] (nodes are always those in state active)"
            )
            raise typer.Exit(2)
        if key == "trait":
            selector.setdefault("traits", []).append(value.strip())
        else:
            selector[key] = value.strip()
    return selector


def _summary(r: dict[str, Any]) -> str:
    counts = ", ".join(f"{n} {s}" for s, n in sorted(r.get("counts", {}).items()))
    return f"rollout {r['uuid']} is {r['state']} ({counts})" + (
        f": {r['last_error']}" if r.get("last_error") else ""
    )


@fleet_app.command("redeploy")
def redeploy(
    image: Annotated[str, typer.Option("--image", help="catalogue image name or UUID, or an http(s) URL")],
    selector: Annotated[
        str,
        typer.Option(
            "--selector",
            help="which active nodes: KEY=VALUE[,...] with resource_class, conductor_group, "
            "name_prefix, trait (repeatable); empty: every active node",
        ),
    ] = "",
    batch: Annotated[str, typer.Option("--batch", help="nodes per batch: N or P% of the selection")] = "1",
    max_failures: Annotated[
        int, typer.Option("--max-failures", help="failed rebuilds tolerated before the rollout stops")
    ] = 0,
    drain_hook: Annotated[
        str | None, typer.Option("--drain-hook", help="a hook named in the server's rollouts.hooks")
    ] = None,
    undrain_hook: Annotated[
        str | None, typer.Option("--undrain-hook", help="a hook named in the server's rollouts.hooks")
    ] = None,
    wait: Annotated[
        float, typer.Option("--wait", help="follow the rollout up to this many seconds (0: return at once)")
    ] = 0,
    url: UrlOpt = DEFAULT_URL,
) -> None:
    """Rebuild the selected active nodes with IMAGE, a batch at a time, in the conductor."""
    body: dict[str, Any] = {
        "selector": parse_selector(selector),
        "image": image,
        "batch": batch,
        "max_failures": max_failures,
    }
    if drain_hook:
        body["drain_hook"] = drain_hook
    if undrain_hook:
        body["undrain_hook"] = undrain_hook
    with _api(url) as api:
        r = api.call("POST", "/v1/rollouts", body, ok=(201,))
        console.print(
            f"rollout {r['uuid']} started: {len(r['nodes'])} nodes in batches of {r['batch_size']} "
            f"(`bootforge fleet status {r['uuid']}`)"
        )
        if wait > 0:
            deadline = time.monotonic() + wait
            while r["state"] not in FINISHED and r["state"] != "paused" and time.monotonic() < deadline:
                time.sleep(2)
                r = api.call("GET", f"/v1/rollouts/{r['uuid']}")
            console.print(_summary(r))
            if r["state"] != "done":
                raise typer.Exit(1)


@fleet_app.command("status")
def status(
    ident: Annotated[str | None, typer.Argument(help="rollout UUID or id; none: the latest rollouts")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="the API's JSON")] = False,
    url: UrlOpt = DEFAULT_URL,
) -> None:
    """A rollout's nodes and where each stands, or the list of rollouts."""
    with _api(url) as api:
        if ident is None:
            rows = api.call("GET", "/v1/rollouts")["rollouts"]
            if as_json:
                console.print_json(json.dumps(rows))
                return
            table = Table("id", "uuid", "state", "image", "batch", "nodes", "failures", "created")
            for r in rows:
                counts = ", ".join(f"{n} {s}" for s, n in sorted(r["counts"].items()))
                table.add_row(
                    str(r["id"]),
                    r["uuid"],
                    r["state"],
                    escape(r["image"]),
                    r["batch"],
                    counts,
                    f"{r['failures']}/{r['max_failures']}",
                    (r["created_at"] or "")[:19],
                )
            console.print(table)
            return
        r = api.call("GET", f"/v1/rollouts/{quote(ident, safe='')}")
        if as_json:
            console.print_json(json.dumps(r))
            return
        console.print(escape(_summary(r)))
        console.print(
            f"image {escape(r['image'])}, batches of {r['batch_size']} ({r['batch']}), "
            f"failures {r['failures']}/{r['max_failures']}, hooks drain={r['drain_hook']} "
            f"undrain={r['undrain_hook']}"
        )
        table = Table("node", "status", "since", "error")
        for n in r["nodes"]:
            since = (n.get("times") or {}).get(n["status"], "")
            table.add_row(escape(n["name"] or n["uuid"]), n["status"], since[11:19], escape(n["error"] or ""))
        console.print(table)


def _action(action: str, ident: str, url: str) -> None:
    with _api(url) as api:
        r = api.call("POST", f"/v1/rollouts/{quote(ident, safe='')}/{action}")
        console.print(escape(_summary(r)))


@fleet_app.command("pause")
def pause(ident: Annotated[str, typer.Argument()], url: UrlOpt = DEFAULT_URL) -> None:
    """Stop before the next node is drained; nodes under way finish."""
    _action("pause", ident, url)


@fleet_app.command("resume")
def resume(ident: Annotated[str, typer.Argument()], url: UrlOpt = DEFAULT_URL) -> None:
    """Go on with a paused rollout, or a failed one (its node whose drain failed is tried again)."""
    _action("resume", ident, url)


@fleet_app.command("abort")
def abort(ident: Annotated[str, typer.Argument()], url: UrlOpt = DEFAULT_URL) -> None:
    """End the rollout: no node is drained or rebuilt any more; drained nodes not yet rebuilt are
    undrained untouched; rebuilds under way finish and are undrained (`aborting` until then)."""
    _action("abort", ident, url)
