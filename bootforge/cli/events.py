"""`bootforge node events NODE --follow`: the node's timeline as it happens, from the server-sent
event stream GET /v1/nodes/{ident}/events/stream.

The stream's message ids are the timeline rows' ids: after a dropped connection the command reconnects
with Last-Event-ID and goes on after the last row it printed, so nothing is printed twice or missed.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import typer
from rich.markup import escape

from bootforge.cli.client import Api, console, err, error_text

# Seconds between reconnection attempts after the stream broke (growing to the last).
RECONNECT = (0.5, 1.0, 2.0, 5.0)


def sse_messages(lines: Iterator[str]) -> Iterator[tuple[str | None, str | None, str]]:
    """(event, id, data) for each message of a text/event-stream; comments and blank keep-alives skipped."""
    event: str | None = None
    ident: str | None = None
    data: list[str] = []
    for line in lines:
        if not line:
            if data:
                yield event, ident, "\n".join(data)
            event, ident, data = None, None, []
        elif line.startswith(":"):
            continue
        else:
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "event":
                event = value
            elif name == "id":
                ident = value
            elif name == "data":
                data.append(value)


def print_row(row: dict[str, Any]) -> None:
    severity = row.get("severity") or "info"
    style = "red" if severity == "error" else ("yellow" if severity == "warning" else "")
    text = (
        f"{str(row.get('created_at'))[:23]}  {severity:<7}  {row.get('event_type') or '':<12}  "
        f"{escape(str(row.get('event')))}"
    )
    console.print(text, style=style, highlight=False, soft_wrap=True)


def follow(api: Api, ident: str, history: int) -> None:
    """Print the newest `history` rows, then every new one, until interrupted."""
    last: str | None = None
    failures = 0
    while True:
        headers = {"Accept": "text/event-stream"}
        params: dict[str, Any] = {"history": history}
        if last is not None:
            headers["Last-Event-ID"] = last
        try:
            # No read timeout: the server sends a keep-alive comment every events.stream_keepalive s.
            timeout = httpx.Timeout(30.0, read=None)
            with api.http.stream(
                "GET", f"/v1/nodes/{ident}/events/stream", params=params, headers=headers, timeout=timeout
            ) as r:
                if r.status_code != 200:
                    r.read()
                    err.print(
                        f"[red]following node {ident} failed ({r.status_code}):[/red] {escape(error_text(r))}"
                    )
                    raise typer.Exit(1)
                failures = 0
                for event, row_id, data in sse_messages(r.iter_lines()):
                    if event != "timeline":
                        continue
                    print_row(json.loads(data))
                    last = row_id or last
        except httpx.HTTPError as e:
            pause = RECONNECT[min(failures, len(RECONNECT) - 1)]
            failures += 1
            err.print(
                f"[yellow]stream from {api.http.base_url} broke ({type(e).__name__}); reconnecting[/yellow]"
            )
            time.sleep(pause)
