"""`--wait` for provisioning verbs (deploy, provide, inspect, ...): the node's progress as it goes.

Polls GET /v1/nodes/{ident}/progress: provision state, the current deploy or clean step (n of m) and
what the agent last reported of its command (done / total and its message; bytes when it writes an
image or erases a disk). On a terminal a rich progress bar per node; piped, one line per change (and
per 10 % of a long command), for logs and scripts. A node that ends anywhere but where the verb leads
gets the server's diagnosis printed, and the command exits 1.
"""

from __future__ import annotations

import time
from typing import Any, Protocol

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from bootforge.cli.client import Api, console, err

__all__ = ["LineDisplay", "RichDisplay", "describe", "wait_for"]

MiB = 1024**2
POLL = 0.5


def describe(p: dict[str, Any]) -> tuple[str, int | None, int | None]:
    """(what the node is doing, done, total): the agent's done/total only while it reports on its command."""
    text = p["provision_state"] + (
        f" -> {p['target_provision_state']}" if p.get("target_provision_state") else ""
    )
    step = p.get("step")
    if step:
        count = f"/{step['count']}" if step.get("count") else ""
        text += f"  {step['kind']} step {step['number']}{count} {step['name']}"
    agent = p.get("agent") or {}
    done, total = agent.get("done"), agent.get("total")
    if agent.get("command"):
        status = agent.get("status")
        text += f"  agent {agent['command']}: {agent.get('message') or status}"
        if status != "running":
            done = total = None
    return text, done, total


def amount(done: int | None, total: int | None) -> str:
    if done is None or not total:
        return ""
    if total >= MiB:
        return f"{done / MiB:.0f} of {total / MiB:.0f} MiB"
    return f"{done} of {total}"


class Display(Protocol):
    def update(self, ident: str, p: dict[str, Any]) -> None: ...
    def __enter__(self) -> Display: ...
    def __exit__(self, *exc: object) -> None: ...


class LineDisplay:
    """One line per change of state, step or agent message, and per 10 % of the agent's done/total."""

    def __init__(self, out: Console) -> None:
        self.out = out
        self.last: dict[str, tuple[str, int]] = {}

    def update(self, ident: str, p: dict[str, Any]) -> None:
        text, done, total = describe(p)
        tenth = done * 10 // total if done is not None and total else -1
        if self.last.get(ident) == (text, tenth):
            return
        self.last[ident] = (text, tenth)
        size = amount(done, total)
        percent = f" {done * 100 // total} %" if done is not None and total else ""
        line = f"{ident}: {text}" + (f" ({percent.strip()}, {size})" if size else "")
        self.out.print(escape(line), highlight=False, soft_wrap=True)

    def __enter__(self) -> LineDisplay:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


class RichDisplay:
    """A rich progress bar per node: state and step as the description, the agent's done/total as the bar."""

    def __init__(self, out: Console) -> None:
        self.progress = Progress(
            TextColumn("{task.fields[node]}", style="bold"),
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.fields[amount]}"),
            TimeElapsedColumn(),
            console=out,
        )
        self.tasks: dict[str, TaskID] = {}

    def update(self, ident: str, p: dict[str, Any]) -> None:
        text, done, total = describe(p)
        if ident not in self.tasks:
            self.tasks[ident] = self.progress.add_task(
                escape(text), total=None, node=escape(ident), amount=""
            )
        task = self.tasks[ident]
        if done is not None and total:
            self.progress.update(
                task, description=escape(text), total=total, completed=done, amount=amount(done, total)
            )
        elif p.get("target_provision_state") is None and p.get("reservation") is None:
            # The work ended (well or not): a still bar.
            self.progress.update(task, description=escape(text), total=1, completed=1, amount="")
        else:
            # No measure of the work (a state change, a step without an agent report): a pulsing bar.
            self.progress.update(task, description=escape(text), total=None, completed=0, amount="")

    def __enter__(self) -> RichDisplay:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()


def wait_for(api: Api, ident: str, timeout: float, expected: str, out: Console | None = None) -> None:
    """Follow `ident` until its work ends (0: up to an hour); exit 1 unless it ends in `expected`."""
    out = out or console
    deadline = time.monotonic() + (timeout or 3600)
    display: Display = RichDisplay(out) if out.is_terminal else LineDisplay(out)
    ended: dict[str, Any] | None = None
    with display:
        while ended is None and time.monotonic() < deadline:
            p: dict[str, Any] = api.call("GET", f"/v1/nodes/{ident}/progress")
            display.update(ident, p)
            if p["target_provision_state"] is None and p["reservation"] is None:
                ended = p
            else:
                time.sleep(POLL)
    if ended is None:
        err.print(f"[red]timed out waiting for {escape(ident)}[/red] (`bootforge node why {escape(ident)}`)")
        raise typer.Exit(1)
    p = ended
    if p["provision_state"] != expected:
        err.print(
            f"[red]{escape(ident)} failed: it is {escape(p['provision_state'])}, not {expected}:[/red] "
            f"{escape(str(p.get('last_error')))}"
        )
        d = api.call("GET", f"/v1/nodes/{ident}/diagnosis")
        err.print(f"[bold]where it stopped:[/bold] {escape(d['summary'])}", highlight=False)
        if d.get("cause"):
            err.print(f"[bold]likely cause:[/bold] {escape(d['cause'])}", highlight=False)
        err.print(f"(the evidence: `bootforge node why {escape(ident)}`)", highlight=False)
        raise typer.Exit(1)
    out.print(f"[green]{escape(ident)} is {escape(p['provision_state'])}[/green]")
