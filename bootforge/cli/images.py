"""`bootforge image ...`: the image catalogue, over the API like the node commands.

`image add NAME FILE` uploads the file from where the command runs (an operator's workstation or the
bootforge host alike), as `baremetal`'s Glance counterpart does; `--on-server` names a file on the
bootforge host instead, which the server imports only from its images.import_dirs.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

import httpx
import typer
from rich.markup import escape
from rich.table import Column, Table

from bootforge.cli.client import DEFAULT_URL, Api, UrlOpt, console, err, error_text
from bootforge.netboot.boot.arch import CPU_ARCHES, cpu_arch

image_app: typer.Typer = typer.Typer(
    help="The OS images deploys write (bootforge's image catalogue).", no_args_is_help=True
)


UNITS = ("B", "KiB", "MiB", "GiB", "TiB")
UPLOAD_CHUNK = 1 << 20


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


def is_url(source: str) -> bool:
    return source.startswith(("http://", "https://"))


def source_arg(source: str) -> str:
    """URLs go as given; a path on the bootforge host must be absolute (the server does not know this
    command's working directory)."""
    if is_url(source) or source.startswith("/"):
        return source
    err.print(f"[red]--on-server needs an absolute path on the bootforge host, got {source!r}[/red]")
    raise typer.Exit(2)


def _chunks(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as f:
        while chunk := f.read(UPLOAD_CHUNK):
            yield chunk


def upload(api: Api, name: str, path: Path, cpu_arch: str | None = None) -> Any:
    """PUT the file's bytes to /v1/images/NAME/file, streamed (never read whole into memory)."""
    try:
        size = os.stat(path).st_size
        if not path.is_file():
            raise IsADirectoryError(f"{path} is not a file")
        with open(path, "rb"):
            pass  # unreadable files are reported here, before anything is sent
    except OSError as e:
        err.print(f"[red]cannot read {path}:[/red] {e.strerror or e}")
        raise typer.Exit(1) from None
    # The name is checked first: a taken name would otherwise be refused only after the server has
    # answered mid-upload, which the client sees as a broken connection.
    taken = api.http.get(f"/v1/images/{quote(name, safe='')}")
    if taken.status_code == 200:
        err.print(f"[red]An image named {name} already exists.[/red]")
        raise typer.Exit(1)
    try:
        r = api.http.put(
            f"/v1/images/{quote(name, safe='')}/file",
            params={"filename": path.name, **({"cpu_arch": cpu_arch} if cpu_arch else {})},
            content=_chunks(path),
            headers={"Content-Type": "application/octet-stream", "Content-Length": str(size)},
        )
    except httpx.HTTPError as e:
        err.print(f"[red]uploading {path} to {api.http.base_url} failed:[/red] {e}")
        raise typer.Exit(1) from None
    if r.status_code != 201:
        err.print(f"[red]uploading {path} failed ({r.status_code}):[/red] {escape(error_text(r))}")
        raise typer.Exit(1)
    return r.json()


@image_app.command("add")
def image_add(
    name: Annotated[str, typer.Argument(help="the image's name (letters, digits, '.', '_', '-')")],
    source: Annotated[
        str,
        typer.Argument(
            metavar="FILE|URL",
            help="a FILE here, uploaded to bootforge; or an http(s) URL the server downloads (from a "
            "public address or one in its images.allow_url_networks)",
        ),
    ],
    on_server: Annotated[
        bool,
        typer.Option(
            "--on-server",
            help="FILE is an absolute path on the bootforge host, inside its images.import_dirs: "
            "the server reads it there instead of receiving an upload",
        ),
    ] = False,
    arch: Annotated[
        str | None,
        typer.Option(
            "--arch",
            metavar="x86_64|aarch64",
            help="the CPU architecture the image is for: deploys to nodes whose properties.cpu_arch "
            "differs are refused. Unset: as the image's EFI System Partition shows (its EFI/BOOT "
            "loader), else any architecture",
        ),
    ] = None,
    url: UrlOpt = DEFAULT_URL,
) -> None:
    """Import an image: raw, zstd-compressed raw or qcow2 (found from the file's content, not its name).

    The command returns once the image is imported: a qcow2 is converted and a URL downloaded first.
    """
    if arch is not None:
        arch = check_arch(arch)
        if arch is None:
            raise typer.Exit(2)
    with _api(url) as api:
        # Imports of large images take as long as copying (and converting) them.
        api.http.timeout = httpx.Timeout(30.0, read=None)
        if is_url(source) or on_server:
            body = {"name": name, "source": source_arg(source)}
            if arch:
                body["cpu_arch"] = arch
            image = api.call("POST", "/v1/images", body, ok=(201,))
        else:
            image = upload(api, name, Path(source).expanduser(), arch)
    console.print(
        f"added image [bold]{image['name']}[/bold] {image['uuid']}: {image['disk_format']}, "
        f"{_size(image['virtual_size'])} on disk, {image.get('cpu_arch') or 'any architecture'}, "
        f"sha256 {image['sha256']}"
    )


def check_arch(arch: str) -> str | None:
    """--arch checked here, before a large upload starts (the server checks it again)."""
    known = cpu_arch(arch)
    if known is None:
        err.print(f"[red]--arch {escape(repr(arch))}: use one of {', '.join(CPU_ARCHES)}[/red]")
    return known.cpu if known else None


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
        "Arch",
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
            i.get("cpu_arch") or "any",
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
