"""A read-only, usr-merged view of several unpacked packages, and the shared-library closure over it.

Debian 12 packages still ship files under /bin, /sbin and /lib (the base system merges them into /usr
at install time). The ramdisk is usr-merged too, so every path is normalised here: ``lib/x`` and
``usr/lib/x`` are the same file. Symlinks are followed inside the view, never on the host (a package's
absolute link ``/lib64/ld-linux-x86-64.so.2`` means the packaged file, not the build machine's).
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Iterable, Sequence
from pathlib import Path

from bootforge.ramdisk.debs import RamdiskError
from bootforge.ramdisk.elf import elf_info

__all__ = ["LIB_DIRS", "RootFs", "normalise"]

# Where the dynamic loader looks without an ld.so.cache (Debian's multiarch defaults).
LIB_DIRS = ("usr/lib/x86_64-linux-gnu", "usr/lib")
_MERGED = ("bin", "sbin", "lib", "lib64")


def normalise(path: str) -> str:
    """A package path as the usr-merged ramdisk sees it, without a leading slash."""
    p = posixpath.normpath("/" + path).lstrip("/")
    top = p.split("/", 1)[0]
    return f"usr/{p}" if top in _MERGED else p


class RootFs:
    """The union of package trees; with duplicates, the tree listed last wins."""

    def __init__(self, trees: Sequence[Path], lib_dirs: Sequence[str] = LIB_DIRS) -> None:
        self.lib_dirs = tuple(lib_dirs)  # the target architecture's multiarch library directories
        self.index: dict[str, Path] = {}
        for tree in trees:
            for dirpath, dirnames, filenames in os.walk(tree):
                rel = os.path.relpath(dirpath, tree)
                for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
                    self.index[normalise(os.path.join(rel, name))] = Path(dirpath, name)

    def resolve(self, path: str) -> str:
        """Follow symlinks (inside the view) to the path of a regular file."""
        p = normalise(path)
        for _ in range(40):
            real = self.index.get(p)
            if real is None:
                raise RamdiskError(f"no package in the ramdisk's list provides /{p}")
            if not real.is_symlink():
                return p
            target = os.readlink(real)
            p = normalise(target if target.startswith("/") else posixpath.join(posixpath.dirname(p), target))
        raise RamdiskError(f"/{path}: too many levels of symbolic links")

    def read(self, path: str) -> bytes:
        return self.index[self.resolve(path)].read_bytes()

    def mode(self, path: str) -> int:
        return self.index[self.resolve(path)].stat().st_mode & 0o7777

    def exists(self, path: str) -> bool:
        return normalise(path) in self.index

    def listdir(self, directory: str) -> list[str]:
        prefix = normalise(directory) + "/"
        return sorted(p for p in self.index if p.startswith(prefix) and "/" not in p[len(prefix) :])

    def find_library(self, soname: str) -> str:
        for d in self.lib_dirs:
            if self.exists(f"{d}/{soname}"):
                return f"{d}/{soname}"
        raise RamdiskError(
            f"no package in the ramdisk's list provides {soname}: add the Debian package that ships it"
        )

    def library_closure(self, programs: Iterable[tuple[str, bytes]]) -> dict[str, str]:
        """{path in the ramdisk: path in the view} of every library and loader the programs need.

        Each library is shipped under its soname (the name DT_NEEDED asks for), as a regular file.
        """
        out: dict[str, str] = {}
        todo = list(programs)
        while todo:
            _, data = todo.pop()
            info = elf_info(data)
            if info is None:
                continue
            wanted = [self.find_library(s) for s in info.needed]
            if info.interpreter:
                wanted.append(normalise(info.interpreter))
            for path in wanted:
                if path not in out:
                    out[path] = self.resolve(path)
                    todo.append((path, self.read(path)))
        return out
