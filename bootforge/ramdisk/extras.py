"""Optional tool sets for the ramdisk (`bootforge ramdisk build --with burn-in`), with their libraries.

The base ramdisk lists its library packages by hand (builder.packages). An optional set names only its
programs' packages; the libraries they need are found from the packages themselves, like ldd over the
.debs: walk the programs' ELF DT_NEEDED closure over the unpacked packages, and for every soname no
unpacked package provides, fetch the Depends of the package whose file needs it (Debian's shlibs put
the provider there) and walk again. Only packages that own a needed file get their dependencies
expanded, so fio's Depends on, say, python3 for its plotting scripts never come in; and only the
programs and the libraries they need are shipped, not the rest of those packages.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from bootforge.ramdisk.debs import RamdiskError, fetch, unpack
from bootforge.ramdisk.elf import elf_info
from bootforge.ramdisk.rootfs import LIB_DIRS, RootFs, normalise

__all__ = ["EXTRAS", "Extra", "add_extras"]

MAX_ROUNDS = 16


@dataclass(frozen=True)
class Extra:
    name: str
    description: str
    packages: tuple[str, ...]
    programs: tuple[str, ...]  # packaged paths, shipped under their usr-merged names


EXTRAS = {
    "burn-in": Extra(
        "burn-in",
        "stress-ng, memtester, fio and iperf3 for the burn-in clean steps",
        ("stress-ng", "memtester", "fio", "iperf3"),
        ("usr/bin/stress-ng", "usr/sbin/memtester", "usr/bin/fio", "usr/bin/iperf3"),
    ),
}


def add_extras(
    rootfs: RootFs,
    cache: Path,
    names: Sequence[str],
    *,
    base_packages: Iterable[str] = (),
    also: Sequence[Path] = (),
    refresh: bool = False,
    say: Callable[[str], None] = lambda _: None,
) -> tuple[str, ...]:
    """Fetch the named sets and the packages their libraries come from into `rootfs` (files the base
    packages have stay theirs); returns the programs to ship. RamdiskError names what cannot be found."""
    unknown = [n for n in names if n not in EXTRAS]
    if unknown:
        raise RamdiskError(f"unknown --with {', '.join(unknown)}; known: {', '.join(EXTRAS)}")
    chosen = [EXTRAS[n] for n in dict.fromkeys(names)]
    if not chosen:
        return ()
    programs = tuple(p for e in chosen for p in e.programs)
    pool = list(dict.fromkeys(p for e in chosen for p in e.packages))
    have = set(base_packages)
    expanded: set[str] = set()
    for _ in range(MAX_ROUNDS):
        say(f"fetching {len(pool)} packages for --with {', '.join(e.name for e in chosen)}")
        debs = fetch(pool, cache / "debs", also, refresh)
        owners: dict[Path, str] = {}
        trees = []
        for package in pool:
            tree = unpack(debs[package], cache / "trees")
            owners[tree] = package
            trees.append(tree)
        view = RootFs(trees)
        for path, real in view.index.items():
            rootfs.index.setdefault(path, real)
        missing = _missing(rootfs, programs)
        if not missing:
            say(f"--with {', '.join(e.name for e in chosen)}: {len(pool)} packages")
            return programs
        needers = {_owner(rootfs.index[n], owners) for ns in missing.values() for n in ns}
        todo = sorted(p for p in needers if p is not None and p not in expanded)
        if not todo:
            soname, who = next(iter(missing.items()))
            raise RamdiskError(
                f"no package provides {soname}, which /{sorted(who)[0]} needs (not in the Depends of "
                "the package that ships it)"
            )
        for package in todo:
            expanded.add(package)
            for dep in depends(package):
                if dep not in have and dep not in pool:
                    pool.append(dep)
    raise RamdiskError(f"the libraries of --with {', '.join(names)} did not resolve in {MAX_ROUNDS} rounds")


def _missing(rootfs: RootFs, programs: Sequence[str]) -> dict[str, set[str]]:
    """soname -> the paths (in the view) of the files that need it and that no package provides."""
    missing: dict[str, set[str]] = {}
    seen: set[str] = set()
    todo = []
    for program in programs:
        if not rootfs.exists(program):
            raise RamdiskError(f"no package of the set ships /{program}")
        todo.append(rootfs.resolve(program))
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        info = elf_info(rootfs.read(path))
        if info is None:
            continue
        for soname in info.needed:
            found: str | None
            try:
                found = rootfs.find_library(soname)
            except RamdiskError:
                found = _private_library(rootfs, soname)
                if found is None:
                    missing.setdefault(soname, set()).add(path)
                    continue
            todo.append(rootfs.resolve(found))
        if info.interpreter and not rootfs.exists(normalise(info.interpreter)):
            missing.setdefault(info.interpreter, set()).add(path)
    return missing


def _private_library(rootfs: RootFs, soname: str) -> str | None:
    """A library a package keeps in a directory of its own, found through its users' RUNPATH (ceph's
    libceph-common.so.2 in usr/lib/x86_64-linux-gnu/ceph/): entered under the standard library
    directory as well, where the closure ships it and the loader finds it once the RUNPATH directory
    (not shipped) is not there. Returns that path, or None when no package has the file."""
    suffix = "/" + soname
    for path in sorted(rootfs.index):
        if path.startswith("usr/lib/") and path.endswith(suffix):
            alias = f"{LIB_DIRS[0]}/{soname}"
            rootfs.index[alias] = rootfs.index[rootfs.resolve(path)]
            return alias
    return None


def _owner(real: Path, owners: dict[Path, str]) -> str | None:
    """The extra package whose unpacked tree holds `real` (None: a base package's file)."""
    for tree, package in owners.items():
        if real.is_relative_to(tree):
            return package
    return None


_DEPENDS = re.compile(r"^\s*\|?(?:Pre)?Depends:\s*(\S+)\s*$", re.MULTILINE)


def depends(package: str) -> list[str]:
    """The packages `package` Depends / Pre-Depends on, one per alternative group (its first real one)."""
    try:
        proc = subprocess.run(
            ["apt-cache", "depends", "--no-recommends", "--no-suggests", "--no-conflicts", "--no-breaks",
             "--no-replaces", "--no-enhances", package],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError) as e:
        raise RamdiskError(f"apt-cache depends {package} failed: {e}") from None
    if proc.returncode != 0:
        raise RamdiskError(f"apt-cache depends {package} failed: {proc.stderr.strip()[-300:]}")
    out: list[str] = []
    in_group = False
    for line in proc.stdout.splitlines():
        m = _DEPENDS.match(line)
        if m is None:
            continue
        alternative = line.lstrip().startswith("|")
        name = m.group(1)
        # "<virtual>" names a virtual package; a group's first concrete alternative is taken.
        if not in_group and not name.startswith("<"):
            out.append(name.split(":", 1)[0])
            in_group = alternative
        elif not alternative:
            in_group = False
    return list(dict.fromkeys(out))
