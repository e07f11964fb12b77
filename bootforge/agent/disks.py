"""The machine's disks: found in sysfs, opened for the disk commands' few low-level operations.

Discovery reads /sys/block (under Context.sys_root) the way Ironic's agent reports disks: whole
disks only, sizes in bytes, the identity strings udev would show (model, vendor, serial, WWN).
Context.disks replaces discovery with explicit paths: regular files in tests and benchmarks, or a
block device such as a loop device.

DiskIO is the one place that writes to a disk. Zeroing is cheap where the kernel can do it
(BLKZEROOUT on a block device, a punched hole in a regular file) and falls back to writing zeros.
Bulk data goes through a second, O_DIRECT descriptor when the disk takes one (write_aligned):
straight from the caller's page-aligned buffer to the device, as `dd oflag=direct` does, instead
of being copied into the page cache and written back later. Whatever O_DIRECT cannot carry (an
unaligned tail, a file system without O_DIRECT such as tmpfs) goes through the page cache.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import mmap
import os
import re
import stat
import struct
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .common import CommandError, Context

__all__ = ["Disk", "DiskIO", "Partition", "find_disks", "list_disks"]

SECTOR = 512
MiB = 1 << 20

# <linux/fs.h>: _IO(0x12, n), and BLKGETSIZE64 = _IOR(0x12, 114, size_t) on 64-bit.
BLKRRPART = 0x125F
BLKFLSBUF = 0x1261
BLKSECDISCARD = 0x127D
BLKZEROOUT = 0x127F
BLKGETSIZE64 = 0x80081272
BLKSSZGET = 0x1268  # the logical block size: the unit O_DIRECT offsets and lengths must keep
FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02

# Whole-disk names in /sys/block that are not disks an image could go to.
VIRTUAL_PREFIXES = ("loop", "ram", "zram", "dm-", "md", "sr", "fd", "nbd")
_HCTL = re.compile(r"^\d+:\d+:\d+:\d+$")
# errnos meaning "this kind of file or device cannot do that", as opposed to an I/O failure.
_UNSUPPORTED = {errno.ENOTTY, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOSYS}
ZEROS_SIZE = 4 * MiB  # one write of zeros when the kernel cannot zero a range itself
WRITEBACK_STEP = 128 * MiB
# O_DIRECT wants the buffer, the offset and the length aligned: a page suits every disk's
# logical block size but the rare larger one, which BLKSSZGET reports.
DIRECT_ALIGN = mmap.PAGESIZE


def aligned_buffer(size: int) -> mmap.mmap:
    """Anonymous memory starting on a page boundary, as O_DIRECT needs (a bytearray's is not)."""
    return mmap.mmap(-1, size)


@dataclass(frozen=True)
class Partition:
    """A partition the kernel knows of (sysfs) or the on-disk table lists; offsets in bytes."""

    node: Path
    start: int
    size: int


@dataclass(frozen=True)
class Disk:
    name: str
    path: Path
    size: int
    model: str | None = None
    vendor: str | None = None
    serial: str | None = None
    wwn: str | None = None
    rotational: bool = False
    hctl: str | None = None
    by_path: str | None = None
    # The kernel's view of the partitions (from sysfs); empty for explicit disks.
    partitions: tuple[Partition, ...] = field(default=(), compare=False)

    def to_inventory(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "size": self.size,
            "model": self.model,
            "vendor": self.vendor,
            "serial": self.serial,
            "wwn": self.wwn,
            "rotational": self.rotational,
            "hctl": self.hctl,
            "by_path": self.by_path,
        }


def list_disks(ctx: Context) -> list[Disk]:
    """The disks an image could be written to, sorted by name."""
    if ctx.disks is not None:
        found = [_explicit_disk(ctx, Path(path)) for path in ctx.disks]
    else:
        block = ctx.sys_root / "sys" / "block"
        by_path = _by_path_links(ctx.dev_dir)
        found = []
        for entry in sorted(block.iterdir()) if block.is_dir() else []:
            if entry.name.startswith(VIRTUAL_PREFIXES):
                continue
            disk = _sysfs_disk(entry, ctx.dev_dir, by_path.get(entry.name))
            if disk is not None and disk.size > 0:
                found.append(disk)
    return sorted(found, key=lambda d: d.name)


def find_disks(ctx: Context, names: list[str] | None) -> list[Disk]:
    """The named disks (all when names is None); an unknown name is an error, not skipped."""
    disks = list_disks(ctx)
    if names is None:
        return disks
    by_name = {d.name: d for d in disks}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        known = ", ".join(by_name) or "none"
        raise CommandError(f"unknown disk {', '.join(unknown)} (disks on this machine: {known})")
    return [by_name[n] for n in names]


def _read(path: Path) -> str | None:
    """A sysfs attribute, stripped; None when absent or empty (virtio disks have no model)."""
    try:
        value = path.read_text(errors="replace").strip()
    except OSError:
        return None
    return value or None


def _sysfs_disk(entry: Path, dev_dir: Path, by_path: str | None) -> Disk | None:
    sectors = _read(entry / "size")
    if sectors is None or not sectors.isdigit():
        return None
    device = entry / "device"
    hctl = device.resolve().name if device.exists() else None
    return Disk(
        name=f"/dev/{entry.name}",
        path=dev_dir / entry.name,
        size=int(sectors) * SECTOR,
        model=_read(device / "model"),
        vendor=_read(device / "vendor"),
        serial=_read(device / "serial") or _read(entry / "serial"),
        wwn=_read(entry / "wwid") or _read(device / "wwid"),
        rotational=_read(entry / "queue" / "rotational") == "1",
        hctl=hctl if hctl and _HCTL.match(hctl) else None,
        by_path=by_path,
        partitions=tuple(_sysfs_partitions(entry, dev_dir)),
    )


def _sysfs_partitions(entry: Path, dev_dir: Path) -> list[Partition]:
    parts = []
    for sub in sorted(entry.iterdir()):
        if not (sub / "partition").exists():
            continue
        start, size = _read(sub / "start"), _read(sub / "size")
        if start and size and start.isdigit() and size.isdigit():
            parts.append(Partition(dev_dir / sub.name, int(start) * SECTOR, int(size) * SECTOR))
    return parts


def _by_path_links(dev_dir: Path) -> dict[str, str]:
    """Kernel name -> its /dev/disk/by-path link (udev's; absent in a ramdisk without udev)."""
    links: dict[str, str] = {}
    directory = dev_dir / "disk" / "by-path"
    with contextlib.suppress(OSError):
        for link in sorted(directory.iterdir()):
            target = os.path.basename(os.readlink(link))
            links.setdefault(target, f"/dev/disk/by-path/{link.name}")
    return links


def _explicit_disk(ctx: Context, path: Path) -> Disk:
    try:
        st = path.stat()
    except OSError as exc:
        raise CommandError(f"disk {path} cannot be used: {exc.strerror}") from exc
    if stat.S_ISREG(st.st_mode):
        return Disk(name=str(path), path=path, size=st.st_size, model="file")
    if not stat.S_ISBLK(st.st_mode):
        raise CommandError(f"disk {path} is neither a regular file nor a block device")
    entry = ctx.sys_root / "sys" / "class" / "block" / path.resolve().name
    found = _sysfs_disk(entry, path.parent, None) if entry.exists() else None
    if found is not None:
        return replace(found, name=str(path), path=path)
    with open(path, "rb") as f:
        (size,) = struct.unpack("=Q", fcntl.ioctl(f.fileno(), BLKGETSIZE64, bytes(8)))
    return Disk(name=str(path), path=path, size=size)


class DiskIO:
    """A disk open for writing. Every write and zeroing is bounded by the disk's size, so a bad
    offset fails loudly instead of growing a regular file or wrapping onto another device."""

    def __init__(self, disk: Disk, direct: bool = True) -> None:
        self.disk = disk
        try:
            self.fd = os.open(disk.path, os.O_WRONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise CommandError(f"cannot open {disk.name} for writing: {exc.strerror}") from exc
        self.is_block = stat.S_ISBLK(os.fstat(self.fd).st_mode)
        self.bytes_written = 0
        self.bytes_zeroed = 0
        # write and write_aligned may run on several threads at once (the image writers): the
        # counters and the writeback tally are updated under this lock.
        self._lock = threading.Lock()
        self.direct_proven = False  # an O_DIRECT write succeeded: the disk takes them
        self._cheap_zeroing = True
        self._writeback = _Writeback(self.fd, disk.name)
        self.align = max(DIRECT_ALIGN, _logical_block_size(self.fd)) if self.is_block else DIRECT_ALIGN
        self.direct_fd = _open_direct(disk.path) if direct else -1
        self._zeros: mmap.mmap | None = None

    def __enter__(self) -> DiskIO:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self.fd >= 0:
            # After a failure elsewhere: that failure is the one to report, not a writeback error.
            with contextlib.suppress(CommandError):
                self._writeback.stop()
            os.close(self.fd)
            self.fd = -1
        self._close_direct()
        if self._zeros is not None:
            self._zeros.close()
            self._zeros = None

    def _close_direct(self) -> None:
        if self.direct_fd >= 0:
            os.close(self.direct_fd)
            self.direct_fd = -1

    @property
    def direct(self) -> bool:
        """Whether bulk writes still bypass the page cache."""
        return self.direct_fd >= 0

    def _bounds(self, offset: int, length: int) -> None:
        if offset < 0 or offset + length > self.disk.size:
            raise CommandError(
                f"refusing to write {length} bytes at offset {offset}: past the end of "
                f"{self.disk.name} ({self.disk.size} bytes)"
            )

    def write(self, data: bytes | bytearray | memoryview, offset: int) -> None:
        view = memoryview(data)
        length = len(view)
        self._bounds(offset, length)
        done = 0
        try:
            while view:
                n = os.pwrite(self.fd, view, offset)
                view, offset, done = view[n:], offset + n, done + n
        except OSError as exc:
            raise CommandError(
                f"writing to {self.disk.name} at offset {offset} failed: {exc.strerror}"
            ) from exc
        finally:
            with self._lock:
                self.bytes_written += done
        with self._lock:
            self._writeback.wrote(length)

    def write_aligned(self, data: memoryview, offset: int) -> None:
        """Like write, for data that starts on a page boundary in memory (a slice of an
        aligned_buffer at a multiple of the page size): its whole blocks go through O_DIRECT when
        the offset is aligned too, the rest (a tail shorter than a block) through write."""
        self._bounds(offset, len(data))
        if self.direct_fd >= 0 and offset % self.align == 0:
            cut = len(data) - len(data) % self.align
            done = self._write_direct(data[:cut], offset) if cut else 0
            data, offset = data[done:], offset + done
        if data:
            self.write(data, offset)

    def _write_direct(self, view: memoryview, offset: int) -> int:
        """Bytes written through O_DIRECT, from the start of view; 0 and O_DIRECT off for good
        when the disk refuses it (EINVAL: a file system or device that cannot do it, or whose
        alignment is stricter than ours), so that write carries the data instead."""
        done = 0
        try:
            while done < len(view):
                n = os.pwrite(self.direct_fd, view[done:], offset + done)
                done += n
                if not n or n % self.align:
                    break  # a short write off the block grid: write finishes the rest
        except OSError as exc:
            if exc.errno != errno.EINVAL or done or self.direct_proven:
                raise CommandError(
                    f"writing to {self.disk.name} at offset {offset + done} failed: {exc.strerror}"
                ) from exc
            self._close_direct()
        finally:
            with self._lock:
                self.bytes_written += done
        if done:
            self.direct_proven = True
        return done

    def zero(self, offset: int, length: int) -> None:
        """Make [offset, offset+length) read as zeros, without sending zeros when the kernel can."""
        if length <= 0:
            return
        self._bounds(offset, length)
        aligned = offset % SECTOR == 0 and length % SECTOR == 0
        if self._cheap_zeroing and (aligned or not self.is_block):
            try:
                if self.is_block:
                    fcntl.ioctl(self.fd, BLKZEROOUT, struct.pack("=QQ", offset, length))
                else:
                    _punch_hole(self.fd, offset, length)
                self.bytes_zeroed += length
                return
            except OSError as exc:
                if exc.errno not in _UNSUPPORTED:
                    raise CommandError(f"zeroing {self.disk.name} at offset {offset} failed: {exc}") from exc
                self._cheap_zeroing = False
        self._write_zeros(offset, length)

    def _write_zeros(self, offset: int, length: int) -> None:
        if self._zeros is None:
            self._zeros = aligned_buffer(ZEROS_SIZE)
        zeros = memoryview(self._zeros)
        end = offset + length
        while offset < end:
            n = min(ZEROS_SIZE, end - offset)
            self.write_aligned(zeros[:n], offset)
            offset += n
        # Zeros are counted as zeroed, not as image data written. Other threads may be writing
        # image data meanwhile, so the correction is one step under the lock.
        with self._lock:
            self.bytes_written -= length
            self.bytes_zeroed += length

    def secure_discard(self) -> None:
        if not self.is_block:
            raise CommandError(f"secure erase is not supported by {self.disk.name}: it is not a block device")
        try:
            fcntl.ioctl(self.fd, BLKSECDISCARD, struct.pack("=QQ", 0, self.disk.size))
        except OSError as exc:
            raise CommandError(
                f"secure erase is not supported by {self.disk.name}: BLKSECDISCARD failed ({exc.strerror})"
            ) from exc

    def flush(self) -> None:
        """Data on stable storage, then the block device's buffer cache dropped, so that what is
        read next (the kernel re-reading the partition table) comes from the disk itself."""
        self._writeback.stop()
        try:
            os.fsync(self.fd)
            if self.is_block:
                fcntl.ioctl(self.fd, BLKFLSBUF)
        except OSError as exc:
            raise CommandError(f"flushing {self.disk.name} failed: {exc.strerror}") from exc

    def reread_partitions(self) -> None:
        try:
            fcntl.ioctl(self.fd, BLKRRPART)
        except OSError as exc:
            # Regular files have no partitions (ENOTTY); loop devices without partscan say EINVAL.
            if exc.errno not in (errno.ENOTTY, errno.EINVAL):
                raise CommandError(
                    f"the kernel could not re-read the partition table of {self.disk.name}: {exc.strerror}"
                ) from exc


class _Writeback:
    """fdatasync in a thread of its own, run again each time WRITEBACK_STEP more bytes were
    written. The disk then works while the stream goes on: left alone, the kernel starts writing
    only once a tenth of RAM is dirty, so the final fsync would pay for a whole image while the
    network idled. The CPU work of writeback also moves off the thread that writes."""

    def __init__(self, fd: int, name: str) -> None:
        self.fd, self.name = fd, name
        self.pending = 0
        self.error: OSError | None = None
        self.wake = threading.Event()
        self.stopping = False
        self.thread: threading.Thread | None = None

    def wrote(self, n: int) -> None:
        self.pending += n
        if self.pending >= WRITEBACK_STEP and not self.stopping:
            self.pending = 0
            if self.thread is None:
                self.thread = threading.Thread(target=self._run, name="disk-writeback", daemon=True)
                self.thread.start()
            self.wake.set()

    def _run(self) -> None:
        while not self.stopping:
            self.wake.wait()
            self.wake.clear()
            if self.stopping or self.error is not None:
                continue
            try:
                os.fdatasync(self.fd)
                # What was synced is clean now: drop it, so the image does not fill the page
                # cache (a ramdisk's memory) and reclaim costs the writer nothing.
                os.posix_fadvise(self.fd, 0, 0, os.POSIX_FADV_DONTNEED)
            except OSError as exc:
                self.error = exc

    def stop(self) -> None:
        self.stopping = True
        if self.thread is not None:
            self.wake.set()
            self.thread.join()
            self.thread = None
        if self.error is not None:
            error, self.error = self.error, None
            raise CommandError(f"writing to {self.name} failed: {error.strerror}") from error


def _logical_block_size(fd: int) -> int:
    try:
        (size,) = struct.unpack("=i", fcntl.ioctl(fd, BLKSSZGET, bytes(4)))
    except OSError:
        return SECTOR
    return max(int(size), SECTOR)


def _open_direct(path: Path) -> int:
    """A second descriptor with O_DIRECT, or -1 where the file system has none (tmpfs: EINVAL):
    every write then goes through the page cache."""
    try:
        return os.open(path, os.O_WRONLY | os.O_CLOEXEC | os.O_DIRECT)
    except OSError:
        return -1


def _punch_hole(fd: int, offset: int, length: int) -> None:
    """fallocate(PUNCH_HOLE|KEEP_SIZE): os has no fallocate with a mode, so ctypes calls libc.
    OSError(ENOSYS) when ctypes is missing (a trimmed ramdisk Python): the caller writes zeros."""
    try:
        import ctypes
    except ImportError as exc:
        raise OSError(errno.ENOSYS, "ctypes is not available") from exc
    if _libc_fallocate()(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


@functools.cache
def _libc_fallocate() -> Any:
    import ctypes

    fallocate = ctypes.CDLL(None, use_errno=True).fallocate
    fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    fallocate.restype = ctypes.c_int
    return fallocate
