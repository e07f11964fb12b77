"""Debian packages in, file trees out: `apt-get download` into a cache, unpacked with Python alone.

A .deb is an ar archive holding ``data.tar.{xz,zst,gz}``; reading it here needs neither dpkg nor root.
Each package is fetched once into ``<cache>/debs`` and unpacked once into ``<cache>/trees/<file stem>``
(published by an atomic rename, so a build killed half way leaves nothing that looks finished). Which
version a build uses is the .deb in the cache: a warm cache gives the same inputs, and so the same
ramdisk, until `refresh` asks apt for the current candidates.
"""

from __future__ import annotations

import gzip
import io
import lzma
import os
import re
import shutil
import subprocess
import tarfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Protocol, cast

import zstandard

__all__ = ["RamdiskError", "deb_members", "fetch", "kernel_package", "python_version", "unpack"]


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


def _depends_on(metapackage: str, pattern: str) -> str:
    out = _run(["apt-cache", "depends", metapackage])
    m = re.search(rf"Depends:\s*({pattern})\s*$", out, re.MULTILINE)
    if m is None:
        raise RamdiskError(f"apt-cache depends {metapackage} names no package matching {pattern}")
    return m.group(1)


def kernel_package() -> str:
    """linux-image-amd64 is a metapackage; the kernel is its linux-image-<abi>-amd64 dependency."""
    return _depends_on("linux-image-amd64", r"linux-image-\S+-amd64")


def python_version() -> str:
    """The distribution's Python ("3.11"), read from python3-minimal's dependency on python3.X-minimal."""
    name = _depends_on("python3-minimal", r"python3\.\d+-minimal")
    return name[len("python") : -len("-minimal")]


def _cached(package: str, dirs: Sequence[Path]) -> Path | None:
    for d in dirs:
        found = sorted(d.glob(f"{package}_*.deb"))
        if found:
            return found[-1]
    return None


def fetch(
    packages: Sequence[str], debs: Path, also: Sequence[Path] = (), refresh: bool = False
) -> dict[str, Path]:
    """The .deb of each package: from `debs` or the read-only caches `also`, else `apt-get download`.

    Missing packages are downloaded in one apt-get call. `refresh` downloads every package again
    (the current candidate) and drops the older .deb files it replaces.
    """
    debs.mkdir(parents=True, exist_ok=True)
    found = {} if refresh else {p: _cached(p, [debs, *also]) for p in packages}
    missing = [p for p in packages if found.get(p) is None]
    if missing:
        old = {p: set(debs.glob(f"{p}_*.deb")) for p in missing}
        try:
            _run(["apt-get", "download", "-q", *missing], cwd=debs)
        except RamdiskError:
            # Stale package lists name versions the archive no longer has: refresh them once, retry.
            _run(["apt-get", "update", "-qq"], cwd=debs)
            _run(["apt-get", "download", "-q", *missing], cwd=debs)
        for p in missing:
            new = set(debs.glob(f"{p}_*.deb")) - old[p]
            if refresh and new:
                for stale in old[p]:
                    stale.unlink()
            found[p] = _cached(p, [debs])
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
