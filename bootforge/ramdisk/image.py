"""The ramdisk's file tree in memory, written out as a reproducible newc cpio and compressed.

Reproducible means: the same entries give the same bytes. Entries are written sorted by path (a
directory always before what it holds), with owner 0:0, a fixed mtime and inode numbers counted in
that order; compression is single-threaded at a fixed level with no timestamps or names embedded.

The kernel unpacks a concatenation of compressed cpio archives as one tree, so the image is written in
segments: the big, rarely changing one (kernel modules, libraries, Python) is compressed once and
cached by its content; a rebuild after an agent change only compresses the small one.
"""

from __future__ import annotations

import gzip
import lzma
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Literal

import zstandard

__all__ = ["COMPRESSORS", "Entry", "Image", "compress", "cpio"]

Kind = Literal["dir", "file", "symlink", "chardev"]


@dataclass(frozen=True)
class Entry:
    kind: Kind
    mode: int  # permission bits only
    data: bytes = b""  # file contents; the target of a symlink
    rdev: tuple[int, int] = (0, 0)


class Image:
    """Paths (relative, no leading slash) to entries; parents are added as 0755 directories."""

    def __init__(self) -> None:
        self.entries: dict[str, Entry] = {}

    def _parents(self, path: str) -> None:
        for parent in reversed(PurePosixPath(path).parents[:-1]):
            self.entries.setdefault(str(parent), Entry("dir", 0o755))

    def add(self, path: str, entry: Entry) -> None:
        path = path.strip("/")
        self._parents(path)
        old = self.entries.get(path)
        if old is not None and old.kind == "dir" and entry.kind == "dir":
            return
        self.entries[path] = entry

    def dir(self, path: str, mode: int = 0o755) -> None:
        self.add(path, Entry("dir", mode))

    def file(self, path: str, data: bytes, mode: int = 0o644) -> None:
        self.add(path, Entry("file", mode, data))

    def symlink(self, path: str, target: str) -> None:
        self.add(path, Entry("symlink", 0o777, target.encode()))

    def chardev(self, path: str, major: int, minor: int, mode: int = 0o600) -> None:
        self.add(path, Entry("chardev", mode, rdev=(major, minor)))

    def paths(self, where: Callable[[str], bool] = lambda _: True) -> list[str]:
        return sorted(p for p in self.entries if where(p))

    def size(self) -> int:
        return sum(len(e.data) for e in self.entries.values() if e.kind == "file")

    def write_to(self, root: Path, where: Callable[[str], bool] = lambda _: True) -> None:
        """Materialise the tree (for running the shipped Python at build time)."""
        for path in self.paths(where):
            entry, target = self.entries[path], root / path
            if entry.kind == "dir":
                target.mkdir(parents=True, exist_ok=True)
            elif entry.kind == "file":
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(entry.data)
                target.chmod(entry.mode)
            elif entry.kind == "symlink":
                target.parent.mkdir(parents=True, exist_ok=True)
                target.symlink_to(entry.data.decode())


_TYPE = {"dir": stat.S_IFDIR, "file": stat.S_IFREG, "symlink": stat.S_IFLNK, "chardev": stat.S_IFCHR}
MTIME = 0


def cpio(image: Image, paths: Iterable[str]) -> bytes:
    """A newc ("070701") archive of `paths` (in the order given), ending with the trailer."""
    out = bytearray()

    def entry(ino: int, name: str, mode: int, data: bytes, nlink: int, rdev: tuple[int, int]) -> None:
        encoded = name.encode() + b"\0"
        fields = (ino, mode, 0, 0, nlink, MTIME, len(data), 0, 0, rdev[0], rdev[1], len(encoded), 0)
        out.extend(b"070701" + b"".join(b"%08X" % v for v in fields) + encoded)
        out.extend(b"\0" * (-(110 + len(encoded)) % 4))
        out.extend(data + b"\0" * (-len(data) % 4))

    ino = 0
    for ino, path in enumerate(paths, start=1):
        e = image.entries[path]
        entry(ino, path, _TYPE[e.kind] | e.mode, e.data, 2 if e.kind == "dir" else 1, e.rdev)
    entry(ino + 1, "TRAILER!!!", 0, b"", 1, (0, 0))
    return bytes(out)


def _zstd(data: bytes) -> bytes:
    # Level 19: decompression speed does not depend on the level, and the size is paid for on every
    # boot. threads=0 keeps the output independent of the machine. compress() writes ONE frame: the
    # kernel's unzstd stops at the end of the first frame and looks for the next segment after it.
    return zstandard.ZstdCompressor(level=19, threads=0, write_checksum=False).compress(data)


def _xz(data: bytes) -> bytes:
    # The kernel's xz decoder supports CRC32 checks only, and no filters but LZMA2 (+ BCJ).
    return lzma.compress(data, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32, preset=9 | lzma.PRESET_EXTREME)


def _gzip(data: bytes) -> bytes:
    return gzip.compress(data, compresslevel=9, mtime=0)


COMPRESSORS: dict[str, Callable[[bytes], bytes]] = {"zstd": _zstd, "xz": _xz, "gzip": _gzip, "none": bytes}


def compress(data: bytes, method: str) -> bytes:
    try:
        fn = COMPRESSORS[method]
    except KeyError:
        raise ValueError(f"unknown compression {method!r}; use one of {', '.join(COMPRESSORS)}") from None
    return fn(data)
