"""The write_image command: an image streamed over HTTP onto the chosen disk, then the config drive.

Nothing is written before the disk is known to fit the image and the config drive. The stream is
hashed as it arrives (the served bytes: compressed ones for zstd) and never held whole in memory.
Receiving, hashing, decompressing and writing overlap: a reader thread fills a few CHUNK buffers;
the command's thread finds each one's zero blocks and hands the rest to two writer threads (two
disk writes in flight), while, for a raw stream, another thread hashes it (for zstd, the thread
feeding zstd hashes). The buffers are page-aligned and reused: the socket (or zstd's
pipe) reads straight into them and the disk is written straight from them with O_DIRECT, so each
byte is copied once, by the kernel receiving it. Blocks of zeros are not written: their range is
zeroed the cheap way (DiskIO.zero), merged across chunks, so a sparse image costs time mostly for
its data.

The image's first MiB (partition table, boot code) is held back and written only once the
checksum matched: a bad download leaves the disk's partition table as it was, so the machine
still boots whatever it booted before.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import http.client
import itertools
import mmap
import os
import queue
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

from . import log
from .common import CommandError, Context, Progress
from .disks import Disk, DiskIO, aligned_buffer, list_disks
from .hints import choose_disk
from .partitions import add_configdrive, configdrive_reserve, decode_configdrive, has_partition_table

__all__ = ["ImageSpec", "run"]

MiB = 1 << 20
CHUNK = 4 * MiB  # one buffer handed from the reader thread to the writer
READ = MiB  # one read from HTTP into zstd's pipe
BLOCK = 64 * 1024  # zero-detection unit: aligned, a multiple of every sector size
HEAD = MiB  # held back until the checksum matched
BUFFERS = 6  # CHUNK buffers in flight (being received, hashed, written): the memory the command holds
WRITERS = 2  # disk writes in flight
ZERO_RUN_MAX = 1 << 30  # one zeroing call at most, so that no single ioctl runs for minutes
HTTP_TIMEOUT_S = 60.0
JOIN_TIMEOUT_S = 10.0
F_SETPIPE_SZ = 1031  # <linux/fcntl.h>; a 1 MiB pipe cuts zstd's context switches 16-fold
DIGEST_HEX = {"sha256": 64, "sha512": 128}
FORMATS = ("raw", "zstd")
ZERO_CHUNK = bytes(CHUNK)
ZERO_BLOCK = bytes(BLOCK)


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
    zstd = _zstd_binary() if spec.format == "zstd" else None
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


def _zstd_binary() -> str:
    zstd = shutil.which("zstd")
    if zstd is None:
        raise CommandError(
            "the image is zstd-compressed but the zstd program is not installed in the ramdisk"
        )
    return zstd


def _write_image(
    spec: ImageSpec, disk: Disk, dio: DiskIO, progress: Progress, need_table: bool, zstd: str | None
) -> str:
    """Streams the image onto the disk, head last; returns the stream's hex digest."""
    hasher = hashlib.new(spec.algo)
    # A raw stream is hashed by the reader's tap thread; a zstd one by the thread feeding zstd.
    body = _HttpImage(spec, hasher if zstd else None)
    try:
        source: _Source = _Zstd(body, zstd) if zstd else body
    except BaseException:
        body.close()
        raise
    reader = _Reader(source.readinto, None if zstd else hasher.update)
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
    """Writes every chunk but the head; returns (head, image bytes seen)."""
    head, offset = b"", 0
    zeros = _ZeroRuns(dio)
    message = f"writing {disk.name}"
    with _Writers(dio, reader.release) as writers:
        for buf, n in reader.chunks():
            if offset + n > spec.virtual_size:
                reader.release(buf)
                raise CommandError(
                    f"the image from {spec.url} is larger than its virtual_size {spec.virtual_size}"
                )
            start = 0
            if offset == 0:
                start = min(n, HEAD)
                head = bytes(buf[:start])
                if need_table and not has_partition_table(head):
                    reader.release(buf)
                    raise CommandError(
                        f"the image from {spec.url} has no partition table, "
                        "so no config drive partition can be added"
                    )
            segments = _data_segments(zeros, buf, start, n, offset)
            if dio.direct_proven:
                writers.submit(buf, segments, offset)
            else:
                # Until one O_DIRECT write went through, the disk may still refuse them and
                # DiskIO switch to the page cache: that switch is made by one writer alone.
                try:
                    _write_segments(dio, buf, segments, offset)
                finally:
                    reader.release(buf)
            offset += n
            progress(offset, spec.virtual_size, message)
        writers.join()
    zeros.flush()
    return head, offset


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


class _Source(Protocol):
    def readinto(self, view: memoryview) -> int: ...
    def finish(self) -> None: ...
    def abort(self) -> None: ...
    def close(self) -> None: ...


class _HttpImage:
    """The image's bytes as served (hashed as they arrive when given a hasher); a short or failed
    stream is an error."""

    def __init__(self, spec: ImageSpec, hasher: Any) -> None:
        self.url, self.hasher, self.received = spec.url, hasher, 0
        self.conn = _connect(spec.url)
        parts = urlsplit(spec.url)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        try:
            self.conn.request("GET", target, headers={"User-Agent": "bootforge-agent"})
            self.resp = self.conn.getresponse()
        except (OSError, http.client.HTTPException) as exc:
            self.conn.close()
            raise CommandError(f"image download from {self.url} failed: {_describe(exc)}") from exc
        if self.resp.status != 200:
            self.conn.close()
            raise CommandError(
                f"image download from {self.url} failed: HTTP {self.resp.status} {self.resp.reason}"
            )
        length = self.resp.length
        if spec.size is not None and length is not None and length != spec.size:
            self.conn.close()
            raise CommandError(f"the image at {self.url} is served as {length} bytes, expected {spec.size}")
        self.expected = length if length is not None else spec.size

    def readinto(self, view: memoryview) -> int:
        try:
            n = self.resp.readinto(view)
        except http.client.IncompleteRead:
            raise self._short() from None
        except (OSError, http.client.HTTPException) as exc:
            raise CommandError(
                f"image download from {self.url} failed after {self.received} bytes: {_describe(exc)}"
            ) from exc
        if n:
            if self.hasher is not None:
                self.hasher.update(view[:n])
            self.received += n
        elif self.expected is not None and self.received != self.expected:
            raise self._short()
        return n

    def _short(self) -> CommandError:
        return CommandError(
            f"image download from {self.url} ended after {self.received} of {self.expected} bytes"
        )

    def finish(self) -> None:
        """Nothing left to check: readinto raised on a short stream."""

    def abort(self) -> None:
        if self.conn.sock is not None:
            # shutdown, unlike close, wakes a reader blocked in recv on another thread.
            with contextlib.suppress(OSError):
                self.conn.sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.conn.close()


def _connect(url: str) -> http.client.HTTPConnection:
    parts = urlsplit(url)
    if parts.scheme == "https":
        import ssl

        context = ssl.create_default_context()
        return http.client.HTTPSConnection(
            parts.hostname or "", parts.port, timeout=HTTP_TIMEOUT_S, context=context
        )
    return http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=HTTP_TIMEOUT_S)


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class _Zstd:
    """The stream decompressed by `zstd -dc`: a feeder thread copies (and so hashes) the HTTP
    stream into its stdin; readinto reads its stdout."""

    def __init__(self, body: _HttpImage, zstd: str) -> None:
        self.body = body
        # zstd's messages go to a file: a pipe nobody reads while it runs could fill up and stall it.
        self.stderr = tempfile.TemporaryFile()  # noqa: SIM115 (closed by close())
        try:
            # --no-check: the stream's sha256 already proves the bytes; zstd's own xxhash of
            # every output byte would double its CPU time on a sparse image.
            self.proc = subprocess.Popen(
                [zstd, "-dc", "-q", "--no-check"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=self.stderr,
                bufsize=0,
            )
        except OSError as exc:
            self.stderr.close()
            raise CommandError(f"could not start zstd to decompress {body.url}: {exc.strerror}") from exc
        if self.proc.stdin is None or self.proc.stdout is None:
            raise CommandError("zstd was started without pipes")  # Popen with PIPE always makes both
        self.stdin, self.stdout = self.proc.stdin, self.proc.stdout
        for pipe in (self.stdin, self.stdout):
            with contextlib.suppress(OSError):
                fcntl.fcntl(pipe.fileno(), F_SETPIPE_SZ, MiB)
        self.error: BaseException | None = None
        self.feeder = threading.Thread(target=self._feed, name="image-zstd-feeder", daemon=True)
        self.feeder.start()

    def _feed(self) -> None:
        view = memoryview(bytearray(READ))
        try:
            while n := self.body.readinto(view):
                data = view[:n]
                while data:
                    data = data[os.write(self.stdin.fileno(), data) :]
        except BrokenPipeError:
            pass  # zstd stopped reading: it failed, and finish() reports its message
        except BaseException as exc:
            self.error = exc
        finally:
            with contextlib.suppress(OSError):
                self.stdin.close()

    def readinto(self, view: memoryview) -> int:
        return os.readv(self.stdout.fileno(), [view])

    def finish(self) -> None:
        self.feeder.join()
        if self.error is not None:
            raise self.error
        if self.proc.wait() != 0:
            self.stderr.seek(0)
            detail = " ".join(self.stderr.read(4096).decode(errors="replace").split())
            detail = detail or f"exit status {self.proc.returncode}"
            raise CommandError(f"zstd could not decompress the image from {self.body.url}: {detail}")

    def abort(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.body.abort()

    def close(self) -> None:
        self.proc.wait()
        self.feeder.join(JOIN_TIMEOUT_S)
        self.body.close()
        self.stdout.close()
        self.stderr.close()


class _Reader:
    """Fills CHUNK buffers from a source in its own thread, so that receiving, hashing and
    decompressing overlap with writing to the disk; BUFFERS bounds the memory held.

    With a tap (the hash of a raw stream), a third thread feeds every chunk to it in order while
    the consumer writes the same chunk: both only read it, and it is refilled once both are done.
    """

    def __init__(
        self, readinto: Callable[[memoryview], int], tap: Callable[[memoryview], object] | None
    ) -> None:
        self._readinto, self._tap = readinto, tap
        self._free: queue.Queue[mmap.mmap | None] = queue.Queue()
        for _ in range(BUFFERS):
            self._free.put(aligned_buffer(CHUNK))
        self._full: queue.Queue[tuple[mmap.mmap, int] | BaseException] = queue.Queue()
        self._tapped: queue.Queue[tuple[mmap.mmap, int] | None] = queue.Queue()
        self._users: dict[int, int] = {}
        self._lock = threading.Lock()
        self._tap_error: BaseException | None = None
        self._stopped = False
        self._threads = [threading.Thread(target=self._run, name="image-reader", daemon=True)]
        if tap is not None:
            self._threads.append(threading.Thread(target=self._run_tap, name="image-hash", daemon=True))
        for thread in self._threads:
            thread.start()

    def _run(self) -> None:
        try:
            while True:
                buf = self._free.get()
                if buf is None or self._stopped:
                    return
                n = self._fill(memoryview(buf))
                if self._tap is not None:
                    with self._lock:
                        self._users[id(buf)] = 2
                    self._tapped.put((buf, n))
                self._full.put((buf, n))
                if n < CHUNK:
                    return
        except BaseException as exc:
            self._full.put(exc)
        finally:
            self._tapped.put(None)

    def _run_tap(self) -> None:
        assert self._tap is not None
        while (item := self._tapped.get()) is not None:
            buf, n = item
            if self._tap_error is None:
                try:
                    self._tap(memoryview(buf)[:n])
                except BaseException as exc:
                    self._tap_error = exc
            self.release(buf)

    def _fill(self, view: memoryview) -> int:
        """Fills the whole buffer unless the stream ends: chunks stay BLOCK-aligned on the disk."""
        got = 0
        while got < len(view):
            n = self._readinto(view[got:])
            if not n:
                break
            got += n
        return got

    def chunks(self) -> Iterator[tuple[mmap.mmap, int]]:
        """(buffer, bytes in it) until the stream ends; hand each buffer back with release()."""
        while True:
            item = self._full.get()
            if isinstance(item, BaseException):
                raise item
            buf, n = item
            if n:
                yield buf, n
            else:
                self.release(buf)
            if n < CHUNK:
                return

    def release(self, buf: mmap.mmap) -> None:
        with self._lock:
            users = self._users.pop(id(buf), 1) - 1
            if users:
                self._users[id(buf)] = users
        if not users:
            self._free.put(buf)

    def drain(self) -> None:
        """Waits until the tap has seen every chunk (the stream has ended)."""
        for thread in self._threads[1:]:
            thread.join()
        if self._tap_error is not None:
            raise self._tap_error

    def stop(self) -> None:
        self._stopped = True
        self._free.put(None)
        for thread in self._threads:
            thread.join(JOIN_TIMEOUT_S)
