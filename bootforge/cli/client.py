"""What every client command shares: the consoles, the --url option and the API client.

A module of its own so that command modules (images, ...) import it instead of cli.main, which imports
them to register their commands: no import cycle inside the cli.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.markup import escape

__all__ = ["API_VERSION", "DEFAULT_URL", "Api", "UrlOpt", "console", "err", "error_text"]


def _console(stderr: bool = False) -> Console:
    # Piped output feeds grep and scripts: no cutting or wrapping at rich's default 80 columns.
    piped = not (sys.stderr if stderr else sys.stdout).isatty() and "COLUMNS" not in os.environ
    return Console(stderr=stderr, width=1000 if piped else None)


console = _console()
err = _console(stderr=True)

API_VERSION = "1.78"
UrlOpt = Annotated[str, typer.Option("--url", envvar="BOOTFORGE_URL", help="bootforge API URL")]
DEFAULT_URL = "http://127.0.0.1:6385"


class Api:
    def __init__(self, url: str) -> None:
        auth = None
        if os.environ.get("BOOTFORGE_USER"):
            auth = httpx.BasicAuth(os.environ["BOOTFORGE_USER"], os.environ.get("BOOTFORGE_PASSWORD", ""))
        self.http = httpx.Client(
            base_url=url, auth=auth, timeout=30, headers={"X-OpenStack-Ironic-API-Version": API_VERSION}
        )

    def call(self, method: str, path: str, body: Any = None, ok: tuple[int, ...] = (200,)) -> Any:
        try:
            r = self.http.request(method, path, json=body)
        except httpx.HTTPError as e:
            err.print(f"[red]cannot reach bootforge at {self.http.base_url}:[/red] {e}")
            raise typer.Exit(1) from None
        if r.status_code not in ok:
            # Escaped: API messages quote input and version ranges in brackets, which rich reads as markup.
            err.print(f"[red]{method} {path} failed ({r.status_code}):[/red] {escape(error_text(r))}")
            raise typer.Exit(1)
        return r.json() if r.content else None


def error_text(r: httpx.Response) -> str:
    try:
        return str(json.loads(r.json()["error_message"])["faultstring"])
    except (ValueError, KeyError, TypeError):
        return r.text
