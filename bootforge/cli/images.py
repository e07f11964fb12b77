"""`bootforge image ...`: the image catalogue, over the API like the node commands."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.table import Column, Table

from bootforge.cli.client import DEFAULT_URL, Api, UrlOpt, console

image_app: typer.Typer = typer.Typer(
    help="The OS images deploys write (bootforge's image catalogue).", no_args_is_help=True
)

UNITS = ("B", "KiB", "MiB", "GiB", "TiB")


@contextmanager
def _api(url: str) -> Iterator[Api]:
    api = Api(url)
    try:
        yield api
    finally:
        api.http.close()


def _size(n: int) -> str:
    value, i = float(n), 0
    while value >= 1024 and i < len(UNITS) - 1:
        value, i = value / 1024, i + 1
    return f"{n} B" if i == 0 else f"{value:.1f} {UNITS[i]}"


def source_arg(source: str) -> str:
    """URLs go as given; a file path is made absolute here, since the server resolves it."""
    if source.startswith(("http://", "https://")):
        return source
    return str(Path(source).expanduser().resolve())


@image_app.command("add")
def image_add(
    name: Annotated[str, typer.Argument(help="the image's name (letters, digits, '.', '_', '-')")],
    source: Annotated[
        str,
        typer.Argument(
            metavar="FILE|URL",
            help="an http(s) URL the server downloads, or a FILE that the bootforge SERVER reads: the "
            "path must exist on the host bootforge runs on (it is made absolute here)",
        ),
    ],
    url: UrlOpt = DEFAULT_URL,
) -> None:
    """Import an image: raw, zstd-compressed raw or qcow2 (found from the file's content, not its name).

    The command returns once the image is imported: a qcow2 is converted and a URL downloaded first.
    """
    with _api(url) as api:
        # Imports of large images take as long as copying (and converting) them.
        api.http.timeout = httpx.Timeout(30.0, read=None)
        image = api.call("POST", "/v1/images", {"name": name, "source": source_arg(source)}, ok=(201,))
    console.print(
        f"added image [bold]{image['name']}[/bold] {image['uuid']}: {image['disk_format']}, "
        f"{_size(image['virtual_size'])} on disk, sha256 {image['sha256']}"
    )


@image_app.command("list")
def image_list(url: UrlOpt = DEFAULT_URL) -> None:
    """List the catalogue (URL images cached for deploys are named url:...)."""
    with _api(url) as api:
        images: list[dict[str, Any]] = api.call("GET", "/v1/images")["images"]
    table = Table(
        Column("UUID", no_wrap=True, min_width=36),
        "Name",
        "Format",
        "Size",
        "Virtual size",
        "Status",
        "Source",
    )
    for i in images:
        table.add_row(
            i["uuid"],
            i["name"],
            i["disk_format"],
            _size(i["size"]),
            _size(i["virtual_size"]),
            i["status"],
            i["source"],
        )
    console.print(table)


@image_app.command("show")
def image_show(ident: Annotated[str, typer.Argument(help="name or UUID")], url: UrlOpt = DEFAULT_URL) -> None:
    """Show one image, with its digests."""
    with _api(url) as api:
        image = api.call("GET", f"/v1/images/{ident}")
    table = Table("Field", "Value", show_header=False)
    for key in sorted(k for k in image if k != "links"):
        value = image[key]
        table.add_row(key, json.dumps(value) if isinstance(value, dict | list) else str(value))
    console.print(table)


@image_app.command("delete")
def image_delete(
    ident: Annotated[str, typer.Argument(help="name or UUID")], url: UrlOpt = DEFAULT_URL
) -> None:
    """Remove an image and its files."""
    with _api(url) as api:
        api.call("DELETE", f"/v1/images/{ident}", ok=(204,))
    console.print(f"deleted image {ident}")
