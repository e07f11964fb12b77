"""Debian packages in, file trees out: `apt-get download` into a cache, unpacked with Python alone.

A .deb is an ar archive holding ``data.tar.{xz,zst,gz}``; reading it here needs neither dpkg nor root.
Each package is fetched once into ``<cache>/debs`` and unpacked once into ``<cache>/trees/<file stem>``
(published by an atomic rename, so a build killed half way leaves nothing that looks finished). Which
version a build uses is the .deb in the cache: a warm cache gives the same inputs, and so the same
ramdisk, until `refresh` asks apt for the current candidates.

Another architecture's packages (arm64 on an amd64 build machine) come through the host's own
sources with an apt state of their own (``<cache>/apt-<arch>``: package lists, an empty dpkg status):
the host's dpkg is never told about a foreign architecture and nothing is installed.
"""

from __future__ import annotations

import gzip
import io
import lzma
import os
import platform
import re
import shutil
import subprocess
import tarfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Protocol, cast

import zstandard

__all__ = [
    "Apt",
    "RamdiskError",
    "deb_members",
    "fetch",
    "host_arch",
    "kernel_package",
    "python_version",
    "unpack",
]


class RamdiskError(RuntimeError):
    """The ramdisk cannot be built; the message says which input is missing or broken, and why."""


def _run(argv: Sequence[str], cwd: Path | None = None) -> str:
    try:
        proc = subprocess.run(list(argv), cwd=cwd, capture_output=True, text=True, timeout=900, check=False)
    except FileNotFoundError:
        raise RamdiskError(f"needs {argv[0]} (Debian's apt)") from None
    if proc.returncode != 0:
        raise RamdiskError(f"{' '.join(argv)} failed: {proc.stderr.strip()[-500:]}")
    return proc.stdout


_HOST_ARCH: list[str] = []
# uname's machine name -> Debian's architecture name, for the usual build machines.
_DEBIAN_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "i686": "i386", "riscv64": "riscv64"}


def host_arch() -> str:
    """The build machine's Debian architecture, read once (dpkg --print-architecture elsewhere)."""
    if not _HOST_ARCH:
        known = _DEBIAN_ARCH.get(platform.machine())
        _HOST_ARCH.append(known or _run(["dpkg", "--print-architecture"]).strip())
    return _HOST_ARCH[0]


_ARCH_NAME = re.compile(r"[a-z0-9]+")


class Apt:
    """apt-get / apt-cache for one Debian architecture. The host's own architecture uses the host's
    apt as it is; another one gets a private state under `state_root` (package lists for that
    architecture only, an empty dpkg status), fetched with `apt-get update` on first use."""

    def __init__(self, arch: str | None = None, state_root: Path | None = None) -> None:
        self.arch = arch or host_arch()
        if not _ARCH_NAME.fullmatch(self.arch):
            raise RamdiskError(f"not a Debian architecture name: {self.arch!r}")
        self.foreign = self.arch != host_arch()
        if self.foreign and state_root is None:
            raise RamdiskError(f"packages for {self.arch} need a directory for their own apt state")
        self.state = (state_root / f"apt-{self.arch}") if state_root is not None else None

    def options(self) -> list[str]:
        if not self.foreign or self.state is None:
            return []
        s = self.state
        return [
            "-o", f"APT::Architecture={self.arch}",
            "-o", f"APT::Architectures::={self.arch}",
            "-o", f"Dir::State::Lists={s / 'lists'}",
            "-o", f"Dir::State::status={s / 'status'}",
            "-o", f"Dir::Cache={s / 'cache'}",
        ]  # fmt: skip

    def _ready(self) -> None:
        """A foreign architecture's lists, fetched once (later builds read them as they are)."""
        if not self.foreign or self.state is None:
            return
        lists = self.state / "lists"
        if any(lists.glob("*_Packages*")):
            return
        for d in (lists / "partial", self.state / "cache" / "archives" / "partial"):
            d.mkdir(parents=True, exist_ok=True)
        (self.state / "status").touch()
        self.update()

    def update(self) -> None:
        _run(["apt-get", *self.options(), "update", "-qq"])

    def cache(self, *args: str) -> str:
        self._ready()
        return _run(["apt-cache", *self.options(), *args])

    def download(self, packages: Sequence[str], cwd: Path) -> None:
        self._ready()
        _run(["apt-get", *self.options(), "download", "-q", *packages], cwd=cwd)


def _depends_on(metapackage: str, pattern: str, apt: Apt | None = None) -> str:
    out = (apt or Apt()).cache("depends", metapackage)
    m = re.search(rf"Depends:\s*({pattern})\s*$", out, re.MULTILINE)
    if m is None:
        raise RamdiskError(f"apt-cache depends {metapackage} names no package matching {pattern}")
    return m.group(1)


def kernel_package(apt: Apt | None = None) -> str:
    """linux-image-<arch> is a metapackage; the kernel is its linux-image-<abi>-<arch> dependency."""
    arch = apt.arch if apt is not None else host_arch()
    return _depends_on(f"linux-image-{arch}", rf"linux-image-\S+-{arch}", apt)


def python_version(apt: Apt | None = None) -> str:
    """The distribution's Python ("3.11"), read from python3-minimal's dependency on python3.X-minimal."""
    name = _depends_on("python3-minimal", r"python3\.\d+-minimal", apt)
    return name[len("python") : -len("-minimal")]


def _cached(package: str, dirs: Sequence[Path], arch: str) -> Path | None:
    # Only that architecture's build or an architecture-independent one: one cache may hold both
    # an amd64 and an arm64 build of a package.
    patterns = [f"{package}_*_{arch}.deb", f"{package}_*_all.deb"]
    for d in dirs:
        found = sorted(p for pattern in patterns for p in d.glob(pattern))
        if found:
            return found[-1]
    return None


def fetch(
    packages: Sequence[str],
    debs: Path,
    also: Sequence[Path] = (),
    refresh: bool = False,
    apt: Apt | None = None,
) -> dict[str, Path]:
    """The .deb of each package: from `debs` or the read-only caches `also`, else `apt-get download`.

    Missing packages are downloaded in one apt-get call. `refresh` downloads every package again
    (the current candidate) and drops the older .deb files it replaces. `apt` names another
    architecture (its .deb files are told apart by name in shared caches).
    """
    debs.mkdir(parents=True, exist_ok=True)
    arch = apt.arch if apt is not None else host_arch()
    found = {} if refresh else {p: _cached(p, [debs, *also], arch) for p in packages}
    missing = [p for p in packages if found.get(p) is None]
    if missing:
        tool = apt or Apt()
        old = {p: set(debs.glob(f"{p}_*.deb")) for p in missing}
        try:
            tool.download(missing, debs)
        except RamdiskError:
            # Stale package lists name versions the archive no longer has: refresh them once, retry.
            tool.update()
            tool.download(missing, debs)
        for p in missing:
            new = set(debs.glob(f"{p}_*.deb")) - old[p]
            if refresh and new:
                for stale in old[p] - new:
                    if stale.name.endswith((f"_{arch}.deb", "_all.deb")):
                        stale.unlink()
            found[p] = _cached(p, [debs], arch)
    out: dict[str, Path] = {}
    for p in packages:
        deb = found.get(p)
        if deb is None:
            raise RamdiskError(f"apt-get download {p} left no .deb in {debs}")
        out[p] = deb
    return out


def _ar_members(f: IO[bytes], deb: Path) -> Iterator[tuple[str, int]]:
    """(name, size) of each member of an ar archive, leaving `f` at that member's data."""
    if f.read(8) != b"!<arch>\n":
        raise RamdiskError(f"{deb} is not a Debian package (no ar header)")
    while True:
        header = f.read(60)
        if len(header) < 60:
            return
        name = header[:16].decode().strip().rstrip("/")
        size = int(header[48:58].decode().strip())
        start = f.tell()
        yield name, size
        f.seek(start + size + (size & 1))  # members are 2-byte aligned


class _Reader(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


def _decompressed(data: bytes, name: str, deb: Path) -> _Reader:
    raw = io.BytesIO(data)
    if name.endswith(".xz"):
        return lzma.LZMAFile(raw)
    if name.endswith(".zst"):
        return zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)
    if name.endswith(".gz"):
        return gzip.GzipFile(fileobj=raw)
    if name == "data.tar":
        return raw
    raise RamdiskError(f"{deb}: unsupported data member {name}")


def deb_members(deb: Path) -> Iterator[tuple[tarfile.TarInfo, tarfile.TarFile]]:
    """Stream the file tree of a package: each tar member with the open archive to read it from."""
    with deb.open("rb") as f:
        for name, size in _ar_members(f, deb):
            if not name.startswith("data.tar"):
                continue
            # The compressed member in memory (70 MB for a kernel); its contents are streamed.
            stream = _decompressed(f.read(size), name, deb)
            with tarfile.open(fileobj=cast("IO[bytes]", stream), mode="r|") as tar:
                for info in tar:
                    yield info, tar
            return
    raise RamdiskError(f"{deb} has no data.tar member")


def unpack(deb: Path, trees: Path) -> Path:
    """The package's files under ``trees/<deb stem>`` (unpacked once; later calls are a lookup)."""
    out = trees / deb.name.removesuffix(".deb")
    if out.is_dir():
        return out
    tmp = trees / f".{out.name}.{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        for info, tar in deb_members(deb):
            # "tar" filter: no absolute paths or ".." escapes; absolute symlink targets are kept as
            # they are and resolved inside the tree by the caller, never on the host.
            tar.extract(info, tmp, set_attrs=False, filter="tar")
            if info.isfile() or info.isdir():
                os.chmod(tmp / info.name, info.mode & 0o7777 | 0o200)
        tmp.rename(out)
    except FileExistsError:  # another build unpacked it first
        pass
    except (OSError, tarfile.TarError, lzma.LZMAError, zstandard.ZstdError) as e:
        raise RamdiskError(f"cannot unpack {deb}: {e}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
