"""The erase command: metadata (the default), full or secure, on every disk or the named ones.

metadata makes a disk look blank to anything that probes it, fast: wipefs erases the signatures
it knows (of each partition, then of the disk), and the first and last MiB of each partition and
of the disk are zeroed regardless, since wipefs may be missing or not know a signature. That
covers MBR, GPT primary and backup, LVM and md superblocks (0.90 and 1.0 live at the end) and
filesystem superblocks. Partitions are the kernel's (sysfs) and the on-disk table's (sfdisk),
since the two differ when a table was written but not re-read.

full zeroes every byte, secure asks the device to discard securely and fails when it cannot:
a silent fallback would leave an operator believing data is gone that is not.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from . import log
from .common import CommandError, Context, Progress
from .disks import Disk, DiskIO, Partition, find_disks
from .partitions import read_table

__all__ = ["run"]

MiB = 1 << 20
EDGE = MiB
# Zeroing step of a full erase: one BLKZEROOUT call, and one progress report, per step.
FULL_STEP = 256 * MiB
WIPEFS_TIMEOUT_S = 120.0


def run(args: Mapping[str, Any], ctx: Context, progress: Progress) -> dict[str, Any]:
    mode = args.get("mode") or "metadata"
    if mode not in ERASERS:
        raise CommandError(f"unknown erase mode {mode!r} (modes: {', '.join(ERASERS)})")
    names = args.get("disks")
    if names is not None and (not isinstance(names, list) or not all(isinstance(n, str) for n in names)):
        raise CommandError(f"erase disks must be a list of disk names, not {names!r}")
    results = []
    for disk in find_disks(ctx, names):
        log(f"erasing {disk.name} ({mode})")
        erased = ERASERS[mode](disk, progress)
        results.append({"name": disk.name, "mode": mode, "bytes": erased})
    return {"disks": results}


def partitions(disk: Disk) -> list[Partition]:
    """The kernel's partitions and the on-disk table's, each once."""
    found = {(p.start, p.size): p for p in disk.partitions}
    table = None
    if shutil.which("sfdisk"):
        try:
            table = read_table(disk.path)
        except CommandError as exc:
            # A damaged table is one more reason to erase, not a reason to stop.
            log(f"erasing {disk.name} without its on-disk partition list: {exc}")
    if table is not None:
        for entry in table.partitions:
            start, size = entry.start * table.sector_size, entry.size * table.sector_size
            found.setdefault((start, size), Partition(Path(entry.node), start, size))
    return sorted(found.values(), key=lambda p: p.start)


def edges(disk: Disk, parts: list[Partition]) -> list[tuple[int, int]]:
    """(offset, length) ranges to zero: the first and last MiB of each partition and of the disk,
    clipped to the disk and merged where they touch."""
    ranges = []
    for start, size in [(0, disk.size), *((p.start, p.size) for p in parts)]:
        end = min(start + size, disk.size)
        if start >= end:
            continue
        ranges.append((start, min(start + EDGE, end)))
        ranges.append((max(end - EDGE, start), end))
    merged: list[list[int]] = []
    for start, end in sorted(ranges):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return [(start, end - start) for start, end in merged]


def _wipefs(device: Path, name: str) -> None:
    wipefs = shutil.which("wipefs")
    if wipefs is None:
        return
    try:
        result = subprocess.run(
            [wipefs, "--all", "--force", str(device)],
            capture_output=True,
            text=True,
            timeout=WIPEFS_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise CommandError(f"wipefs on {name} did not finish within {WIPEFS_TIMEOUT_S:.0f} s") from exc
    if result.returncode != 0:
        detail = " ".join(result.stderr.split()) or f"exit status {result.returncode}"
        raise CommandError(f"wipefs could not erase the signatures on {name}: {detail}")


def erase_metadata(disk: Disk, progress: Progress) -> int:
    parts = partitions(disk)
    # Partition nodes exist only for a block device whose kernel knows the partition.
    for part in parts:
        if part.node.is_block_device():
            _wipefs(part.node, str(part.node))
    _wipefs(disk.path, disk.name)
    ranges = edges(disk, parts)
    with DiskIO(disk) as dio:
        for i, (offset, length) in enumerate(ranges):
            dio.zero(offset, length)
            progress(i + 1, len(ranges), f"erasing metadata on {disk.name}")
        dio.flush()
        dio.reread_partitions()
        return dio.bytes_zeroed


def erase_full(disk: Disk, progress: Progress) -> int:
    with DiskIO(disk) as dio:
        for offset in range(0, disk.size, FULL_STEP):
            length = min(FULL_STEP, disk.size - offset)
            dio.zero(offset, length)
            progress(offset + length, disk.size, f"erasing {disk.name}")
        dio.flush()
        dio.reread_partitions()
        return dio.bytes_zeroed


def erase_secure(disk: Disk, progress: Progress) -> int:
    with DiskIO(disk) as dio:
        progress(0, disk.size, f"secure erase of {disk.name}")
        dio.secure_discard()
        progress(disk.size, disk.size, f"secure erase of {disk.name}")
        dio.flush()
        dio.reread_partitions()
    return disk.size


ERASERS: dict[str, Callable[[Disk, Progress], int]] = {
    "metadata": erase_metadata,
    "full": erase_full,
    "secure": erase_secure,
}
