"""`bootforge ramdisk build`: the deploy ramdisk (kernel + initrd) from Debian's packages and the agent."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from bootforge.netboot.boot import arch as arches
from bootforge.netboot.boot import loaders
from bootforge.ramdisk import DEFAULT_CACHE, BuildResult, RamdiskError, build
from bootforge.ramdisk.debs import host_arch
from bootforge.ramdisk.image import COMPRESSORS
from bootforge.ramdisk.target import TARGETS

ramdisk_app: typer.Typer = typer.Typer(
    help="The deploy ramdisk: Debian's kernel, busybox, Python and the bootforge agent.",
    no_args_is_help=True,
)
console = Console()
err = Console(stderr=True)


def _targets(state_dir: Path | None, output_dir: Path | None, cpu: str) -> tuple[Path, str, str]:
    """(directory, kernel name, initrd name): --output-dir, else where the netboot server looks for
    the ramdisk of CPU architecture `cpu` (arch.ramdisk_file: bootforge/arm64/vmlinuz for aarch64)."""
    if output_dir is not None:
        return output_dir, "vmlinuz", "initrd"
    from bootforge.config import Settings

    try:
        settings = Settings.model_validate({"state_dir": state_dir} if state_dir else {})
    except ValueError as e:
        err.print(f"[red]invalid settings:[/red] {escape(str(e))}")
        raise typer.Exit(2) from None
    nb = settings.netboot
    urls = [n for n in (nb.deploy_kernel, nb.deploy_ramdisk) if "://" in n]
    if urls:
        err.print(f"[red]netboot names the ramdisk by URL ({', '.join(urls)}):[/red] pass --output-dir")
        raise typer.Exit(2)
    kernel, initrd = arches.ramdisk_file(nb.deploy_kernel, cpu), arches.ramdisk_file(nb.deploy_ramdisk, cpu)
    return nb.root or settings.state_dir / "boot", kernel, initrd


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def _report(r: BuildResult) -> None:
    # soft_wrap: a path is never cut or folded, whatever the terminal width (scripts grep it).
    rows = [
        ("kernel", r.kernel_size, r.kernel, f"Linux {r.kernel_version}"),
        ("initrd", r.initrd_size, r.initrd, f"{r.compression}, {_mib(r.unpacked_size)} unpacked"),
    ]
    for name, size, path, note in rows:
        console.print(
            f"{name}  [bold]{_mib(size):>9}[/bold]  {escape(str(path))}  [dim]({note})[/dim]", soft_wrap=True
        )
    console.print(f"total   [bold]{_mib(r.total_size):>9}[/bold]", soft_wrap=True)
    console.print(
        f"built in [bold]{r.seconds:.1f} s[/bold] from {len(r.debs)} Debian {r.arch} packages", soft_wrap=True
    )


@ramdisk_app.command("build")
def build_cmd(
    state_dir: Annotated[
        Path | None, typer.Option(help="bootforge's state directory (default: from the settings)")
    ] = None,
    cache_dir: Annotated[
        Path,
        typer.Option(envvar="BOOTFORGE_RAMDISK_CACHE", help="where packages and build steps are cached"),
    ] = DEFAULT_CACHE,
    output_dir: Annotated[
        Path | None,
        typer.Option(help="write vmlinuz and initrd here (default: the netboot root's bootforge/)"),
    ] = None,
    refresh: Annotated[
        bool, typer.Option(help="download the current version of every package again")
    ] = False,
    compression: Annotated[str, typer.Option(help=f"one of {', '.join(COMPRESSORS)}")] = "zstd",
    ca_bundle: Annotated[
        Path | None,
        typer.Option(
            help="PEM CA bundle the agent verifies the API's certificate against (an https public_url)"
        ),
    ] = None,
    signed_loaders: Annotated[
        bool,
        typer.Option(
            help="also fetch Debian's signed shim and GRUB (Secure Boot nodes; every arm64 node) "
            "for the architecture into the loader cache"
        ),
    ] = True,
    arch: Annotated[
        str | None,
        typer.Option(
            help=f"Debian architecture to build for: {', '.join(TARGETS)} (default: this machine's); "
            "other than amd64 the files go under <dir>/<arch>/ (bootforge/arm64/vmlinuz)"
        ),
    ] = None,
    with_tools: Annotated[
        list[str] | None,
        typer.Option(
            "--with",
            help="add an optional tool set with its libraries: burn-in (stress-ng, memtester, fio, "
            "iperf3 for the burn-in clean steps); repeatable",
        ),
    ] = None,
) -> None:
    """Build the deploy ramdisk from Debian packages, reproducibly; prints its size and build time."""
    if compression not in COMPRESSORS:
        err.print(f"[red]unknown compression {compression!r}; use one of {', '.join(COMPRESSORS)}[/red]")
        raise typer.Exit(2)
    debian = arch or host_arch()
    cpu = arches.cpu_arch(debian)
    if debian not in TARGETS or cpu is None:
        err.print(f"[red]--arch: no ramdisk recipe for {debian!r}; use one of {', '.join(TARGETS)}[/red]")
        raise typer.Exit(2)
    directory, kernel_name, initrd_name = _targets(state_dir, output_dir, cpu.cpu)
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        err.print(f"[red]cannot use the cache directory {cache_dir}:[/red] {e.strerror} (use --cache-dir)")
        raise typer.Exit(1) from None
    if not os.access(cache_dir, os.W_OK):
        err.print(f"[red]the cache directory {cache_dir} is not writable[/red] (use --cache-dir)")
        raise typer.Exit(1)
    try:
        with console.status("building the ramdisk") as status:

            def say(message: str) -> None:
                console.print(f"  {escape(message)}", style="dim")
                status.update(escape(message))

            result = build(
                directory, cache_dir, kernel_name=kernel_name, initrd_name=initrd_name,
                compression=compression, refresh=refresh, ca_bundle=ca_bundle, say=say, arch=debian,
                with_tools=with_tools or (),
            )  # fmt: skip
    except RamdiskError as e:
        err.print(f"[red]ramdisk build failed:[/red] {escape(str(e))}")
        raise typer.Exit(1) from None
    _report(result)
    if signed_loaders and debian in loaders.SIGNED_CHAIN_PACKAGES:
        _fetch_signed_loaders(debian)


def _fetch_signed_loaders(debian: str) -> None:
    """Debian's signed shim and GRUB into the loader cache (unpacked, never installed): `serve` finds
    them there for nodes that boot with Secure Boot (and arm64 nodes, which have no iPXE). A failure
    is a warning: the ramdisk is built."""
    names = ", ".join(loaders.SIGNED_CHAIN_PACKAGES[debian])
    try:
        with console.status(f"fetching the signed loaders ({names}, {debian})"):
            trees = loaders.fetch_signed_loaders(arch=debian)
    except (RamdiskError, OSError) as e:
        err.print(f"[yellow]Secure Boot loaders not fetched:[/yellow] {escape(str(e))}")
        return
    console.print(f"Secure Boot loaders (shim, signed GRUB) in {escape(', '.join(trees))}")
