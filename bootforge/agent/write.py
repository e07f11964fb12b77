"""The write_image command: an image streamed over HTTP onto the chosen disk, then the config drive.

Nothing is written before the disk is known to fit the image and the config drive. The stream is
hashed as it arrives (the served bytes: compressed ones for zstd) and never held whole in memory.
Receiving, hashing, decompressing and writing overlap: a reader thread fills a few CHUNK buffers;
the command's thread finds each one's zero blocks and hands the rest to two writer threads (two
disk writes in flight), while, for an uncompressed stream, another thread hashes it (for zstd, the
thread feeding zstd hashes). The buffers are page-aligned and reused: the socket (or zstd's
pipe) reads straight into them and the disk is written straight from them with O_DIRECT, so each
byte is copied once, by the kernel receiving it. Blocks of zeros are not written: their range is
zeroed the cheap way (DiskIO.zero), merged across chunks, so a sparse image costs time mostly for
its data.

Four formats: raw, zstd (raw compressed), simg (an Android sparse image, see sparse.py) and
simg+zstd. A sparse stream names its zero runs instead of carrying them: the reader thread decodes
it into buffers of data (each starting at a block boundary on the disk) and zero ranges, so the
time it takes follows the image's data, not its size.

The image's first MiB (partition table, boot code) is held back and written only once the
checksum matched: a bad download leaves the disk's partition table as it was, so the machine
still boots whatever it booted before.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import mmap
import queue
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from . import log, sparse
from .common import CommandError, Context, Progress
from .disks import Disk, DiskIO, aligned_buffer, list_disks
from .hints import choose_disk
from .partitions import add_configdrive, configdrive_reserve, decode_configdrive, has_partition_table
from .stream import HttpImage, Source, Zstd, zstd_binary

__all__ = ["ImageSpec", "run"]

MiB = 1 << 20
CHUNK = 4 * MiB  # one buffer handed from the reader thread to the writer
BLOCK = 64 * 1024  # zero-detection unit: aligned, a multiple of every sector size
HEAD = MiB  # held back until the checksum matched
BUFFERS = 6  # CHUNK buffers in flight (being received, hashed, written): the memory the command holds
WRITERS = 2  # disk writes in flight
ZERO_RUN_MAX = 1 << 30  # one zeroing call at most, so that no single ioctl runs for minutes
JOIN_TIMEOUT_S = 10.0
DIGEST_HEX = {"sha256": 64, "sha512": 128}
FORMATS = ("raw", "zstd", "simg", "simg+zstd")
COMPRESSED = ("zstd", "simg+zstd")
SPARSE = ("simg", "simg+zstd")
ZERO_CHUNK = bytes(CHUNK)
ZERO_BLOCK = bytes(BLOCK)

# What the reader thread hands the writer, in disk order: (buffer, n, offset), buffer[:n] being the
# disk's bytes at offset, or (None, length, offset), a range to zero. None ends the stream.
Item = tuple[mmap.mmap | None, int, int]


@dataclass(frozen=True)
class ImageSpec:
    url: str
    format: str
    size: int | None  # bytes of the stream as served
    virtual_size: int  # bytes on disk
    algo: str
    checksum: str

    @classmethod
    def parse(cls, raw: object) -> ImageSpec:
        if not isinstance(raw, Mapping):
            raise CommandError(f"write_image needs an image object, not {raw!r}")
        url = raw.get("url")
        if (
            not isinstance(url, str)
            or urlsplit(url).scheme not in ("http", "https")
            or not urlsplit(url).hostname
        ):
            raise CommandError(f"image url {url!r} is not an http:// or https:// URL")
        fmt = raw.get("format", "raw")
        if fmt not in FORMATS:
            raise CommandError(f"image format {fmt!r} is not one of {', '.join(FORMATS)}")
        size = _count(raw, "size", None)
        virtual_size = _count(raw, "virtual_size", size if fmt == "raw" else None)
        if virtual_size is None or virtual_size <= 0:
            raise CommandError(f"image {url} needs a positive virtual_size (bytes on disk)")
        algo = raw.get("checksum_algo", "sha256")
        if algo not in DIGEST_HEX:
            raise CommandError(f"checksum_algo {algo!r} is not one of {', '.join(DIGEST_HEX)}")
        checksum = raw.get("checksum")
        if not isinstance(checksum, str) or not _is_hex(checksum, DIGEST_HEX[algo]):
            raise CommandError(f"image checksum {checksum!r} is not a {algo} hex digest")
        return cls(url, fmt, size, virtual_size, algo, checksum.lower())


def _count(raw: Mapping[str, Any], key: str, default: int | None) -> int | None:
    value = raw.get(key, default)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
        raise CommandError(f"image {key} {value!r} is not a byte count")
    return value


def _is_hex(text: str, length: int) -> bool:
    return len(text) == length and all(c in "0123456789abcdefABCDEF" for c in text)


def run(args: Mapping[str, Any], ctx: Context, progress: Progress) -> dict[str, Any]:
    started = time.monotonic()
    spec = ImageSpec.parse(args.get("image"))
    configdrive = args.get("configdrive")
    if configdrive is not None and not isinstance(configdrive, str):
        raise CommandError("configdrive must be a base64 string or null")
    iso = decode_configdrive(configdrive) if configdrive else None
    needed, need = spec.virtual_size, f"the image needs {spec.virtual_size} bytes"
    if iso is not None:
        needed += configdrive_reserve(len(iso))
        need += f" plus {configdrive_reserve(len(iso))} for the config drive partition"
    disk = choose_disk(list_disks(ctx), args.get("root_device_hints") or {}, needed, need)
    zstd = zstd_binary() if spec.format in COMPRESSED else None
    log(f"writing {spec.url} to {disk.name}")
    with DiskIO(disk) as dio:
        checksum = _write_image(spec, disk, dio, progress, iso is not None, zstd)
        written, zeroed = dio.bytes_written, dio.bytes_zeroed
        partition = add_configdrive(disk, dio, iso) if iso is not None else None
        dio.flush()
        dio.reread_partitions()
    seconds = time.monotonic() - started
    log(f"wrote {written} bytes to {disk.name}, zeroed {zeroed}, in {seconds:.1f} s")
    return {
        "root_device": disk.name,
        "bytes_written": written,
        "bytes_zeroed": zeroed,
        "checksum_algo": spec.algo,
        "checksum": checksum,
        "configdrive_partition": partition,
        "seconds": round(seconds, 3),
    }


def _write_image(
    spec: ImageSpec, disk: Disk, dio: DiskIO, progress: Progress, need_table: bool, zstd: str | None
) -> str:
    """Streams the image onto the disk, head last; returns the stream's hex digest."""
    hasher = hashlib.new(spec.algo)
    # An uncompressed stream is hashed by the reader's tap thread; a zstd one by the thread feeding zstd.
    body = HttpImage(spec.url, spec.size, hasher if zstd else None)
    try:
        source: Source = Zstd(body, zstd) if zstd else body
    except BaseException:
        body.close()
        raise
    produce: Callable[[_Reader], None] = _produce_raw
    if spec.format in SPARSE:
        produce = functools.partial(sparse.decode, virtual_size=spec.virtual_size, url=spec.url)
    reader = _Reader(source.readinto, produce, None if zstd else hasher.update)
    try:
        head, total = _pump(reader, spec, disk, dio, progress, need_table)
        reader.drain()
        source.finish()
    finally:
        # abort wakes a reader thread blocked on the network or the pipe; file descriptors are
        # closed only once it is gone, so that it never reads from a reused descriptor.
        source.abort()
        reader.stop()
        source.close()
    actual = hasher.hexdigest()
    if actual != spec.checksum:
        raise CommandError(f"image checksum mismatch: expected {spec.algo} {spec.checksum}, got {actual}")
    if total != spec.virtual_size:
        raise CommandError(
            f"the image from {spec.url} holds {total} bytes, not its virtual_size {spec.virtual_size}"
        )
    dio.write(head, 0)
    return actual


def _pump(
    reader: _Reader, spec: ImageSpec, disk: Disk, dio: DiskIO, progress: Progress, need_table: bool
) -> tuple[bytes, int]:
    """Writes everything but the head; returns (head, image bytes seen)."""
    head = _Head(spec, need_table)
    zeros = _ZeroRuns(dio)
    done = 0
    message = f"writing {disk.name}"
    with _Writers(dio, reader.release) as writers:
        for buf, n, offset in reader.items():
            try:
                start = head.take(buf, n, offset, done)
            except BaseException:
                if buf is not None:
                    reader.release(buf)
                raise
            if buf is None:
                if n > start:
                    zeros.add(offset + start, n - start)
            elif dio.direct_proven:
                writers.submit(buf, _data_segments(zeros, buf, start, n, offset), offset)
            else:
                # Until one O_DIRECT write went through, the disk may still refuse them and
                # DiskIO switch to the page cache: that switch is made by one writer alone.
                try:
                    _write_segments(dio, buf, _data_segments(zeros, buf, start, n, offset), offset)
                finally:
                    reader.release(buf)
            done = offset + n
            progress(done, spec.virtual_size, message)
        writers.join()
    zeros.flush()
    return bytes(head.data), done


class _Head:
    """The disk's first HEAD bytes as the image has them, gathered from the items that reach into
    it; written last. Zero ranges leave it zero. Once it is complete, and before anything past it
    is written, it must hold a partition table when a config drive is to be added."""

    def __init__(self, spec: ImageSpec, need_table: bool) -> None:
        self.spec = spec
        self.data = bytearray(min(HEAD, spec.virtual_size))
        self.checked = not need_table

    def take(self, buf: mmap.mmap | None, n: int, offset: int, done: int) -> int:
        """Copies what of the item lies in the head; returns how many of its n bytes that is."""
        if offset != done:
            raise CommandError(f"the image reader skipped from byte {done} to {offset}")  # a bug
        if offset + n > self.spec.virtual_size:
            raise CommandError(
                f"the image from {self.spec.url} is larger than its virtual_size {self.spec.virtual_size}"
            )
        taken = max(0, min(n, len(self.data) - offset))
        if buf is not None and taken:
            self.data[offset : offset + taken] = memoryview(buf)[:taken]
        if not self.checked and offset + n >= len(self.data):
            self.checked = True
            if not has_partition_table(bytes(self.data)):
                raise CommandError(
                    f"the image from {self.spec.url} has no partition table, "
                    "so no config drive partition can be added"
                )
        return taken


def _data_segments(
    zeros: _ZeroRuns, buf: mmap.mmap, start: int, end: int, base: int
) -> list[tuple[int, int]]:
    """The [lo, hi) ranges of buf[start:end] to write; whole BLOCKs of zeros go to `zeros`
    (disk offset base+lo) instead. bytes.startswith takes a memoryview and compares in place at
    memcmp speed (comparing memoryviews would go element by element, and slicing the mmap would
    copy)."""
    view = memoryview(buf)
    if start == 0 and end == CHUNK and ZERO_CHUNK.startswith(view):
        zeros.add(base, CHUNK)
        return []

    def is_zero(pos: int) -> bool:
        return end - pos >= BLOCK and ZERO_BLOCK.startswith(view[pos : pos + BLOCK])

    segments = []
    for zero, group in itertools.groupby(range(start, end, BLOCK), key=is_zero):
        positions = list(group)
        lo, hi = positions[0], min(positions[-1] + BLOCK, end)
        if zero:
            zeros.add(base + lo, hi - lo)
        else:
            segments.append((lo, hi))
    return segments


def _write_segments(dio: DiskIO, buf: mmap.mmap, segments: list[tuple[int, int]], base: int) -> None:
    view = memoryview(buf)
    for lo, hi in segments:
        # lo is a multiple of BLOCK: the slice stays page-aligned for O_DIRECT.
        dio.write_aligned(view[lo:hi], base + lo)


class _Writers:
    """WRITERS threads that write chunks to the disk, each buffer handed back once written.

    A disk written one O_DIRECT request at a time idles between the end of one write and the
    submission of the next, and the CPU work of receiving and hashing delays that submission
    further; with two in flight the next is already queued when one completes (bench/image_write.py:
    about a tenth more throughput on the loop target, and real controllers gain more from a queue).
    Zero runs stay with the command's thread: they are merged across chunks in order.
    """

    def __init__(self, dio: DiskIO, release: Callable[[mmap.mmap], None]) -> None:
        self._dio, self._release = dio, release
        self._tasks: queue.Queue[tuple[mmap.mmap, list[tuple[int, int]], int] | None] = queue.Queue()
        self._error: BaseException | None = None
        self._failed = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, name=f"image-writer-{i}", daemon=True) for i in range(WRITERS)
        ]
        for thread in self._threads:
            thread.start()

    def __enter__(self) -> _Writers:
        return self

    def __exit__(self, *exc: object) -> None:
        # On the error path: queued chunks are skipped (their buffers still handed back), writes
        # in progress end before DiskIO closes the descriptors they use.
        self._failed.set()
        self._stop()

    def submit(self, buf: mmap.mmap, segments: list[tuple[int, int]], base: int) -> None:
        if self._error is not None:
            self._release(buf)
            raise self._error
        self._tasks.put((buf, segments, base))

    def join(self) -> None:
        """Waits for every submitted write; raises the first that failed."""
        self._stop()
        if self._error is not None:
            raise self._error

    def _stop(self) -> None:
        for _ in self._threads:
            self._tasks.put(None)
        for thread in self._threads:
            thread.join(JOIN_TIMEOUT_S if self._failed.is_set() else None)
        self._threads = []

    def _run(self) -> None:
        while (task := self._tasks.get()) is not None:
            buf, segments, base = task
            try:
                if not self._failed.is_set():
                    _write_segments(self._dio, buf, segments, base)
            except BaseException as exc:
                if self._error is None:
                    self._error = exc
                self._failed.set()
            finally:
                self._release(buf)


class _ZeroRuns:
    """Zero ranges merged across chunks, so that a long run costs one zeroing call, not one per block."""

    def __init__(self, dio: DiskIO) -> None:
        self.dio = dio
        self.start = self.end = 0

    def add(self, start: int, length: int) -> None:
        if start != self.end or self.end - self.start >= ZERO_RUN_MAX:
            self.flush()
            self.start = start
        self.end = start + length

    def flush(self) -> None:
        if self.end > self.start:
            self.dio.zero(self.start, self.end - self.start)
        self.start = self.end


def _produce_raw(feed: _Reader) -> None:
    """A raw (or decompressed) stream: whole CHUNKs at consecutive disk offsets, so that every
    buffer starts on a BLOCK boundary of the disk."""
    offset = 0
    while True:
        buf = feed.take()
        view = memoryview(buf)
        n = 0
        while n < CHUNK and (got := feed.readinto(view[n:])):
            n += got
        if n:
            feed.tap(view[:n])
            feed.give(buf, n, offset)
        else:
            feed.release(buf)
        offset += n
        if n < CHUNK:
            return


class _Stopped(Exception):
    """The command is over: the producer gives up."""


class _Reader:
    """Runs a producer (_produce_raw or sparse.decode) in its own thread, so that receiving,
    hashing and decompressing overlap with writing to the disk; BUFFERS bounds the memory held.
    The producer reads the source, fills buffers and hands items to the consumer (items()).

    With a tap (the hash of an uncompressed stream), a third thread feeds it every stream byte in
    order (tap()) while the consumer writes the same buffers: both only read them, and a buffer
    is refilled once both are done with it.
    """

    def __init__(
        self,
        readinto: Callable[[memoryview], int],
        produce: Callable[[_Reader], None],
        tap: Callable[[memoryview], object] | None,
    ) -> None:
        self.readinto, self._produce, self._tap = readinto, produce, tap
        self._free: queue.Queue[mmap.mmap | None] = queue.Queue()
        for _ in range(BUFFERS):
            self._free.put(aligned_buffer(CHUNK))
        self._full: queue.Queue[Item | BaseException | None] = queue.Queue()
        # Stream bytes to hash, or a buffer whose bytes were all hashed (to release).
        self._tapped: queue.Queue[bytes | memoryview | mmap.mmap | None] = queue.Queue()
        self._users: dict[int, int] = {}
        self._lock = threading.Lock()
        self._tap_error: BaseException | None = None
        self._stopped = False
        self._threads = [threading.Thread(target=self._run, name="image-reader", daemon=True)]
        if tap is not None:
            self._threads.append(threading.Thread(target=self._run_tap, name="image-hash", daemon=True))
        for thread in self._threads:
            thread.start()

    # --- the producer's side (the reader thread) ---------------------------------------------

    def take(self) -> mmap.mmap:
        buf = self._free.get()
        if buf is None or self._stopped:
            raise _Stopped
        return buf

    def tap(self, data: bytes | memoryview) -> None:
        if self._tap is not None:
            self._tapped.put(data)

    def give(self, buf: mmap.mmap, n: int, offset: int) -> None:
        if self._tap is not None:
            with self._lock:
                self._users[id(buf)] = 2
            self._tapped.put(buf)
        self._full.put((buf, n, offset))

    def zero(self, offset: int, length: int) -> None:
        self._full.put((None, length, offset))

    def _run(self) -> None:
        try:
            self._produce(self)
            self._full.put(None)
        except _Stopped:
            pass
        except BaseException as exc:
            self._full.put(exc)
        finally:
            self._tapped.put(None)

    def _run_tap(self) -> None:
        assert self._tap is not None
        while (item := self._tapped.get()) is not None:
            if isinstance(item, mmap.mmap):
                self.release(item)
            elif self._tap_error is None:
                try:
                    self._tap(memoryview(item))
                except BaseException as exc:
                    self._tap_error = exc

    # --- the consumer's side -----------------------------------------------------------------

    def items(self) -> Iterator[Item]:
        """Until the stream ends; hand each buffer back with release()."""
        while (item := self._full.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item

    def release(self, buf: mmap.mmap) -> None:
        with self._lock:
            users = self._users.pop(id(buf), 1) - 1
            if users:
                self._users[id(buf)] = users
        if not users:
            self._free.put(buf)

    def drain(self) -> None:
        """Waits until the tap has seen every byte (the stream has ended)."""
        for thread in self._threads[1:]:
            thread.join()
        if self._tap_error is not None:
            raise self._tap_error

    def stop(self) -> None:
        self._stopped = True
        self._free.put(None)
        for thread in self._threads:
            thread.join(JOIN_TIMEOUT_S)
