"""Boot loader binaries from Debian packages: the logical names clients ask for -> files on disk.

bootforge ships no loader binaries. The README's set-up installs Debian's `ipxe`; the signed
chains (`shim-signed`, `grub-efi-amd64-signed`, and for ARM64 the arm64 builds of `shim-signed` and
`grub-efi-arm64-signed`) are fetched into a cache, never installed. This module finds their files
and, for anything missing, names what provides it. The logical names are the ones the DHCP arch
table (arch.py) hands out, plus the files shim asks for by fixed name in the Secure Boot chain:
shim loads `grubx64.efi` / `grubaa64.efi` (and `mmx64.efi` / `mmaa64.efi` for MOK management) from
the directory it came from, so the signed GRUB is published under that name, never renamed or
re-signed.

Operator directories (extra_dirs, the setting `netboot.loader_dirs`) are searched first, in order,
by logical name, so a locally built iPXE (an architecture Debian does not package, or an embedded
script) or a shim/GRUB from elsewhere overrides the packaged one.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from .arch import ARCHES

__all__ = [
    "DEFAULT_LOADER_CACHE",
    "LOADERS",
    "LOADER_DIRS_SETTING",
    "SIGNED_CHAIN_LOADERS",
    "SIGNED_CHAIN_PACKAGES",
    "LoaderMissing",
    "LoaderSet",
    "LoaderSpec",
    "cached_loader_trees",
    "chain_arch",
    "fetch_signed_loaders",
    "find_loaders",
    "how_to_provide",
    "loader_names_for_arches",
]

# The setting that names the operator's loader directories, as the operator writes it.
LOADER_DIRS_SETTING = "netboot.loader_dirs"


@dataclass(frozen=True, slots=True)
class LoaderSpec:
    name: str  # what clients request (TFTP path or URL basename)
    package: str | None  # the Debian package that ships it; None: Debian 12 ships no build of it
    paths: tuple[str, ...]  # where that package puts it, most specific first


def _specs() -> dict[str, LoaderSpec]:
    ipxe, grub, grub_aa64 = (
        "/usr/lib/ipxe",
        "/usr/lib/grub/x86_64-efi-signed",
        "/usr/lib/grub/arm64-efi-signed",
    )
    rows = [
        LoaderSpec("undionly.kpxe", "ipxe", (f"{ipxe}/undionly.kpxe",)),
        LoaderSpec("undionly.kkpxe", "ipxe", (f"{ipxe}/undionly.kkpxe",)),
        LoaderSpec("ipxe.pxe", "ipxe", (f"{ipxe}/ipxe.pxe",)),
        LoaderSpec("ipxe.lkrn", "ipxe", (f"{ipxe}/ipxe.lkrn", "/boot/ipxe.lkrn")),
        LoaderSpec("ipxe.efi", "ipxe", (f"{ipxe}/ipxe.efi", "/boot/ipxe.efi")),
        LoaderSpec("snponly.efi", "ipxe", (f"{ipxe}/snponly.efi",)),
        LoaderSpec("ipxe.iso", "ipxe", (f"{ipxe}/ipxe.iso",)),
        LoaderSpec("shimx64.efi", "shim-signed", ("/usr/lib/shim/shimx64.efi.signed",)),
        LoaderSpec("mmx64.efi", "shim-helpers-amd64-signed", ("/usr/lib/shim/mmx64.efi.signed",)),
        # The network image: built-in net modules and a /grub prefix (lab capture LOCAL-2).
        LoaderSpec("grubx64.efi", "grub-efi-amd64-signed", (f"{grub}/grubnetx64.efi.signed",)),
        # ARM64: the arm64 build of shim-signed (the same package name) and its network GRUB.
        LoaderSpec("shimaa64.efi", "shim-signed", ("/usr/lib/shim/shimaa64.efi.signed",)),
        LoaderSpec("mmaa64.efi", "shim-helpers-arm64-signed", ("/usr/lib/shim/mmaa64.efi.signed",)),
        LoaderSpec("grubaa64.efi", "grub-efi-arm64-signed", (f"{grub_aa64}/grubnetaa64.efi.signed",)),
        # Debian 12's ipxe package is x86 only; other architectures need an operator build.
        LoaderSpec("ipxe-i386.efi", None, ()),
        LoaderSpec("ipxe-arm32.efi", None, ()),
        LoaderSpec("ipxe-arm64.efi", None, ()),
        LoaderSpec("ipxe-riscv64.efi", None, ()),
        LoaderSpec("ipxe-loong64.efi", None, ()),
    ]
    return {row.name: row for row in rows}


LOADERS: dict[str, LoaderSpec] = _specs()


class LoaderMissing(FileNotFoundError):
    """A loader a client needs is not on disk; the message says how to get it."""


@dataclass(frozen=True, slots=True)
class _Missing:
    name: str
    package: str | None
    searched: tuple[str, ...]

    def message(self) -> str:
        where = ", ".join(self.searched) or "nowhere (no known location)"
        return f"boot loader {self.name} not found ({how_to_provide(self.name)}); looked in {where}"


def how_to_provide(name: str) -> str:
    """What the operator does to make loader `name` available: the package, or the setting."""
    spec = LOADERS.get(name)
    own = f"put a file named {name} into a directory listed in {LOADER_DIRS_SETTING}"
    if spec is None or spec.package is None:
        return f"no Debian package ships it; build it and {own}"
    if name in SIGNED_CHAIN_LOADERS:
        # Installing shim-signed / grub-efi-amd64-signed runs maintainer scripts that may change the
        # host's own boot: they are fetched and unpacked into bootforge's cache instead.
        arch = chain_arch(name)
        build = "bootforge ramdisk build" + ("" if arch == "amd64" else f" --arch {arch}")
        return (
            f"run `{build}`, which fetches {spec.package} ({arch}) into {DEFAULT_LOADER_CACHE} "
            f"without installing it, or {own}"
        )
    return f"install it with: apt-get install -y {spec.package}, or {own}"


class LoaderSet:
    """The result of one search: found files by logical name, and what is missing and why."""

    def __init__(self, found: Mapping[str, str], missing: Iterable[_Missing]) -> None:
        self._found = dict(found)
        self._missing = {m.name: m for m in missing}

    @property
    def found(self) -> dict[str, str]:
        """Logical name -> absolute path, ready to publish under that name."""
        return dict(self._found)

    @property
    def missing(self) -> list[str]:
        return sorted(self._missing)

    def path(self, name: str) -> str:
        if name in self._found:
            return self._found[name]
        missing = self._missing.get(name) or _Missing(name, None, ())
        raise LoaderMissing(missing.message())

    def problems(self) -> list[str]:
        """One line per missing loader, naming the package that provides it."""
        return [self._missing[name].message() for name in self.missing]

    def packages_to_install(self) -> list[str]:
        return sorted({m.package for m in self._missing.values() if m.package is not None})


def _usable(path: str) -> bool:
    try:
        info = os.stat(path)  # follows symlinks: distributions link loaders into /boot
    except OSError:
        return False
    return stat.S_ISREG(info.st_mode) and info.st_size > 0 and os.access(path, os.R_OK)


def _under(root: str, path: str) -> str:
    return os.path.join(root, path.lstrip("/")) if root not in ("", "/") else path


def find_loaders(
    names: Iterable[str] | None = None,
    *,
    root: str = "/",
    extra_dirs: Iterable[str] = (),
    trees: Iterable[str] = (),
) -> LoaderSet:
    """Look for each loader (all known ones by default) in extra_dirs, then the package paths.

    root relocates the package paths (an unpacked .deb tree in tests); extra_dirs are taken as given.
    trees are unpacked package trees (fetch_signed_loaders) searched after root's package paths.
    """
    extra = tuple(extra_dirs)
    unpacked = tuple(trees)
    found: dict[str, str] = {}
    missing: list[_Missing] = []
    for name in sorted(set(LOADERS) if names is None else set(names)):
        spec = LOADERS.get(name, LoaderSpec(name, None, ()))
        candidates = [os.path.join(d, name) for d in extra]
        candidates += [_under(root, p) for p in spec.paths]
        candidates += [_under(tree, p) for tree in unpacked for p in spec.paths]
        hit = next((c for c in candidates if _usable(c)), None)
        if hit is None:
            missing.append(_Missing(name, spec.package, tuple(candidates)))
        else:
            found[name] = os.path.abspath(hit)
    return LoaderSet(found, missing)


def loader_names_for_arches() -> set[str]:
    """Every loader the DHCP arch table can hand out."""
    return {row.loader for row in ARCHES.values() if row.loader is not None}


# The Secure Boot chains' packages by Debian architecture. They are never installed on the host: their
# maintainer scripts may run grub-install / update the host's boot entries. Fetched and unpacked
# into a cache instead (another architecture's through its own apt state: bootforge.ramdisk.debs.Apt).
SIGNED_CHAIN_PACKAGES: dict[str, tuple[str, ...]] = {
    "amd64": ("shim-signed", "grub-efi-amd64-signed"),
    "arm64": ("shim-signed", "grub-efi-arm64-signed"),
}
# Loader name -> the Debian architecture whose packages provide it.
_CHAIN_ARCH = {
    "shimx64.efi": "amd64",
    "grubx64.efi": "amd64",
    "shimaa64.efi": "arm64",
    "grubaa64.efi": "arm64",
}
SIGNED_CHAIN_LOADERS = tuple(_CHAIN_ARCH)
DEFAULT_LOADER_CACHE = Path(os.environ.get("BOOTFORGE_LOADER_CACHE", "/var/cache/bootforge/loaders"))


def chain_arch(name: str) -> str:
    """The Debian architecture whose signed packages hold loader `name` (amd64 for unknown names)."""
    return _CHAIN_ARCH.get(name, "amd64")


def cached_loader_trees(cache: Path = DEFAULT_LOADER_CACHE) -> list[str]:
    """The unpacked package trees already in the cache (no network): for find_loaders(trees=...)."""
    trees = cache / "trees"
    if not trees.is_dir():
        return []
    # Newest version last in name order; searched newest first.
    return [
        str(t) for t in sorted(trees.iterdir(), reverse=True) if t.is_dir() and not t.name.startswith(".")
    ]


def fetch_signed_loaders(
    cache: Path = DEFAULT_LOADER_CACHE, refresh: bool = False, arch: str = "amd64"
) -> list[str]:
    """apt-get download Debian's signed shim and GRUB for Debian architecture `arch` into `cache`,
    unpack them (once), and return the trees. Raises bootforge.ramdisk.debs.RamdiskError naming
    what failed (an architecture without a signed chain included)."""
    from bootforge.ramdisk import debs  # the ramdisk builder's fetcher; imported late (zstandard)

    packages = SIGNED_CHAIN_PACKAGES.get(arch)
    if packages is None:
        raise debs.RamdiskError(
            f"Debian signs no shim/GRUB for {arch!r}: use one of {', '.join(SIGNED_CHAIN_PACKAGES)}"
        )
    fetched = debs.fetch(list(packages), cache / "debs", refresh=refresh, apt=debs.Apt(arch, cache))
    return [str(debs.unpack(deb, cache / "trees")) for deb in fetched.values()]
