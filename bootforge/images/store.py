"""The file side of an import (blocking: the catalogue runs it in a thread).

Every import first brings the source's bytes into a work file under images/.partial (a download, or a
copy of a local file), hashing them as they pass: the digests, the format check and a qcow2 conversion
then all see the same bytes, even if the operator's file changes meanwhile.

What the agent is served is the image's Android sparse stream (sparse.py), so that a deploy takes time
for the image's data, not for its zeros: images/<uuid>.simg for a raw source (uncompressed, as the
operator chose), images/<uuid>.simg.zst for a zstd source (decompressed first, holes kept) and for a
qcow2 (converted by qemu-img first). The original's digests are recorded beside the stream's. Images
imported before sparse streams are served as they were stored (<uuid>.raw, <uuid>.raw.zst). The served
file appears by rename only once it is complete and flushed to disk, so the HTTP boot server never
serves half an image.

Which sources may be read at all (host paths in images.import_dirs, URLs on allowed networks) is
sources.py's to decide; an upload (PUT /v1/images/{name}/file) is written to the work file as it arrives.
"""

from __future__ import annotations

import io
import os
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import zstandard

from bootforge.config import ImageSettings
from bootforge.errors import BootforgeError
from bootforge.images.arch import detect_cpu_arch
from bootforge.images.formats import (
    HEAD_SIZE,
    QCOW2,
    RAW,
    SECTOR,
    SIMG,
    SIMG_ZSTD,
    ZSTD,
    Digests,
    ImageError,
    check_cancelled,
    check_head,
    check_zstd_frames,
    parse_qcow2,
    read_head,
    sniff,
)
from bootforge.images.sources import SourcePolicy, check_progress
from bootforge.images.sparse import BLOCK, extents, write_simg

# Zero runs at least BLOCK long (and aligned to it) are not written: they stay holes in work files.
CHUNK = 1 << 20
ZERO_BLOCK = bytes(BLOCK)
# Served files by stream format; raw and zstd are those of images imported before sparse streams.
SUFFIX = {RAW: ".raw", ZSTD: ".raw.zst", SIMG: ".simg", SIMG_ZSTD: ".simg.zst"}


@dataclass(frozen=True)
class Stored:
    """What an import produced: the original's facts and those of the file served to the agent."""

    disk_format: str
    size: int
    virtual_size: int
    sha256: str
    sha512: str
    stream_path: str  # relative to the netboot root
    stream_format: str
    stream_size: int
    stream_sha256: str
    stream_sha512: str
    # What the image's EFI System Partition says (arch.py); None when it does not say reliably.
    cpu_arch: str | None = None


def is_url(source: str) -> bool:
    return source.startswith(("http://", "https://"))


def redact_url(url: str) -> str:
    """The URL without a password or query string (pre-signed URLs carry their secret there)."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        user, host = netloc.rsplit("@", 1)
        netloc = f"{user.split(':', 1)[0]}:***@{host}" if ":" in user else netloc
    return urlunsplit((parts.scheme, netloc, parts.path, "***" if parts.query else "", ""))


class SparseWriter:
    """Writes a stream to a new file at increasing offsets, leaving aligned zero blocks as holes."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.offset = 0  # file offset of the first byte of `_pending`
        self._pending = bytearray()

    def write(self, data: bytes | bytearray) -> None:
        if not self._pending and len(data) % BLOCK == 0:
            self._emit(data, len(data))
            return
        self._pending += data
        whole = len(self._pending) - len(self._pending) % BLOCK
        if whole >= CHUNK:
            self._emit(self._pending, whole)
            del self._pending[:whole]

    def skip(self, count: int) -> None:
        """Leave `count` bytes of zeros (a hole of the source) unwritten."""
        if self._pending:
            self._emit(self._pending, len(self._pending))
            self._pending.clear()
        self.offset += count

    def close(self) -> int:
        """Write what is left, set the file's length (trailing holes included); returns it."""
        if self._pending:
            self._emit(self._pending, len(self._pending))
            self._pending.clear()
        os.ftruncate(self.fd, self.offset)
        return self.offset

    def _emit(self, buf: bytes | bytearray, n: int) -> None:
        view = memoryview(buf)
        run = -1  # start of the current run of non-zero blocks
        for i in range(0, n, BLOCK):
            end = min(i + BLOCK, n)
            zero = buf.startswith(ZERO_BLOCK if end - i == BLOCK else bytes(end - i), i, end)
            if zero and run >= 0:
                self._pwrite(view[run:i], self.offset + run)
                run = -1
            elif not zero and run < 0:
                run = i
        if run >= 0:
            self._pwrite(view[run:n], self.offset + run)
        self.offset += n

    def _pwrite(self, data: memoryview, offset: int) -> None:
        while data:
            written = os.pwrite(self.fd, data, offset)
            data, offset = data[written:], offset + written


class ImageStore:
    """Image files under <root>/images, named by image UUID."""

    def __init__(self, root: Path, settings: ImageSettings | None = None) -> None:
        self.root = root
        self.dir = root / "images"
        self.partial = self.dir / ".partial"
        self.policy = SourcePolicy(settings)

    def import_image(self, image_uuid: str, source: str, stop: threading.Event | None = None) -> Stored:
        """Import a host file (inside images.import_dirs) or an http(s) URL (on an allowed network)."""

        def fill(work: Path, stop: threading.Event) -> Digests:
            if is_url(source):
                return download(source, work, stop, self.policy)
            return copy_local(source, work, stop, self.policy)

        return self._import(image_uuid, fill, stop or threading.Event())

    def begin_upload(self, image_uuid: str) -> Upload:
        """The work file an upload is written to as it arrives (then `import_upload`)."""
        self.partial.mkdir(parents=True, exist_ok=True)
        return Upload(self.partial / f"{image_uuid}.source")

    def import_upload(self, image_uuid: str, upload: Upload, stop: threading.Event | None = None) -> Stored:
        """Import what `upload` received (complete: the request's body has ended)."""
        return self._import(image_uuid, lambda work, _stop: upload.finish(), stop or threading.Event())

    def _import(
        self, image_uuid: str, fill: Callable[[Path, threading.Event], Digests], stop: threading.Event
    ) -> Stored:
        self.partial.mkdir(parents=True, exist_ok=True)
        work = self.partial / f"{image_uuid}.source"
        try:
            digests = fill(work, stop)
            return self._store(image_uuid, work, digests, stop)
        except OSError as e:
            # e.g. the store's disk is full: the operator needs the reason, not "internal error".
            where = f" ({e.filename})" if e.filename else ""
            raise BootforgeError(f"importing the image failed: {e.strerror or e}{where}") from None
        finally:
            for leftover in self.partial.glob(f"{image_uuid}.*"):
                leftover.unlink(missing_ok=True)

    def remove(self, image_uuid: str) -> None:
        for suffix in SUFFIX.values():
            (self.dir / f"{image_uuid}{suffix}").unlink(missing_ok=True)
        if self.partial.is_dir():
            for leftover in self.partial.glob(f"{image_uuid}.*"):
                leftover.unlink(missing_ok=True)

    def _store(self, image_uuid: str, work: Path, digests: Digests, stop: threading.Event) -> Stored:
        fmt = check_head(read_head(work))
        raw = self._raw(image_uuid, work, fmt, stop)
        virtual_size = raw.stat().st_size
        # The size is not told: for a URL it would describe an answer that is not an image at all.
        if virtual_size == 0:
            raise ImageError("the image is empty (0 bytes): it is not a disk image")
        if virtual_size % SECTOR:
            raise ImageError(
                f"the image's size is not a whole number of {SECTOR}-byte sectors: it is not a disk image"
            )
        # A raw source stays uncompressed (the operator chose raw); the others were compressed.
        stream_format = SIMG if fmt == RAW else SIMG_ZSTD
        served = self.partial / f"{image_uuid}.stream"
        stream = write_simg(raw, served, stop, compress=stream_format == SIMG_ZSTD)
        found = detect_cpu_arch(raw)
        rel = self._publish(served, image_uuid, stream_format, stop)
        return Stored(
            disk_format=fmt,
            size=digests.size,
            virtual_size=virtual_size,
            sha256=digests.sha256,
            sha512=digests.sha512,
            stream_path=rel,
            stream_format=stream_format,
            stream_size=stream.size,
            stream_sha256=stream.sha256,
            stream_sha512=stream.sha512,
            cpu_arch=found.cpu_arch if found else None,
        )

    def _raw(self, image_uuid: str, work: Path, fmt: str, stop: threading.Event) -> Path:
        """The source's disk bytes as a sparse file: the work file itself for a raw source."""
        if fmt == RAW:
            return work
        if fmt == QCOW2:
            size = parse_qcow2(read_head(work)).virtual_size
            raw = self.partial / f"{image_uuid}.converted"
            qemu_img_convert(work, raw, stop)
            if raw.stat().st_size != size:
                raise ImageError(
                    f"qemu-img wrote {raw.stat().st_size} bytes for a qcow2 of virtual size {size}"
                )
        else:
            raw = self.partial / f"{image_uuid}.decompressed"
            decompress(work, raw, stop)
        work.unlink()  # the store's disk holds the source, its raw form and the stream at once otherwise
        return raw

    def _publish(self, path: Path, image_uuid: str, fmt: str, stop: threading.Event) -> str:
        name = f"{image_uuid}{SUFFIX[fmt]}"
        with open(path, "rb+") as f:
            os.fsync(f.fileno())
        check_cancelled(stop)
        os.replace(path, self.dir / name)
        return f"images/{name}"


def _open_new(path: Path) -> int:
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)


class Upload:
    """An uploaded image written to its work file as it arrives (holes kept), hashed on the way; what is
    no image is refused from its first 4 KiB. Blocking: the catalogue calls it in a thread."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.digests = Digests()
        self._fd = _open_new(work)
        self._writer = SparseWriter(self._fd)
        self._head = b""
        self._closed = False

    def write(self, data: bytes) -> None:
        if len(self._head) < HEAD_SIZE:
            self._head += data[: HEAD_SIZE - len(self._head)]
            if len(self._head) == HEAD_SIZE:
                check_head(self._head)
        self.digests.update(data)
        self._writer.write(data)

    def finish(self) -> Digests:
        if len(self._head) < HEAD_SIZE:
            check_head(self._head)
        self._writer.close()
        self.close()
        return self.digests

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            os.close(self._fd)


def copy_local(src: str, dest: Path, stop: threading.Event, policy: SourcePolicy) -> Digests:
    """Copy a file on this host into `dest` (holes kept), hashing it; refuses what is no image first.
    Only a regular file inside images.import_dirs is read (policy.open_local)."""
    fd = policy.open_local(src)
    with open(fd, "rb", buffering=0) as f:
        head = f.read(4096)
        # Cheap refusals before copying what may be many GiB.
        check_head(head)
        f.seek(0)
        return _copy_stream(f, dest, stop)


def _copy_stream(f: io.FileIO, dest: Path, stop: threading.Event) -> Digests:
    """Holes of the source are hashed as zeros and left as holes, without being read."""
    digests = Digests()
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    fd = f.fileno()
    out = _open_new(dest)
    try:
        writer = SparseWriter(out)
        for offset, length, has_data in extents(fd, os.fstat(fd).st_size):
            check_cancelled(stop)
            if not has_data:
                digests.update_zeros(length)
                writer.skip(length)
                continue
            end = offset + length
            while offset < end:
                n = os.preadv(fd, [view[: min(CHUNK, end - offset)]], offset)
                if n == 0:
                    raise ImageError("the source file shrank while it was being imported")
                check_cancelled(stop)
                digests.update(view[:n])
                writer.write(buf if n == CHUNK else buf[:n])
                offset += n
        writer.close()
    finally:
        os.close(out)
    return digests


def download(url: str, dest: Path, stop: threading.Event, policy: SourcePolicy | None = None) -> Digests:
    """Stream an http(s) URL into `dest` (zero runs as holes), hashing it; nothing is held in memory.
    Every hop's address is checked, and the download is bounded in size and time (policy)."""
    policy = policy or SourcePolicy()
    shown = redact_url(url)
    digests = Digests()
    out = _open_new(dest)
    try:
        writer = SparseWriter(out)
        with policy.fetch(url, shown) as (response, deadline):
            declared = response.headers.get("content-length", "")
            if declared.isdigit() and len(declared) < 20:
                check_progress(int(declared), deadline, shown, policy.settings)
            # Without a chunk size, each network read arrives as it comes: limits are checked per read.
            for chunk in response.iter_bytes():
                check_cancelled(stop)
                digests.update(chunk)
                check_progress(digests.size, deadline, shown, policy.settings)
                writer.write(chunk)
        writer.close()
    finally:
        os.close(out)
    return digests


def qemu_img_convert(src: Path, dest: Path, stop: threading.Event) -> None:
    """qcow2 -> sparse raw. The format is given (never probed) and the header was checked first: no
    backing or data file, so qemu-img opens no file but `src`."""
    cmd = ["qemu-img", "convert", "-q", "-f", "qcow2", "-O", "raw", str(src), str(dest)]
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    except FileNotFoundError:
        raise BootforgeError(
            "importing a qcow2 image needs qemu-img (Debian package qemu-utils), which is not installed"
        ) from None
    while True:
        try:
            _, stderr = proc.communicate(timeout=1.0)
            break
        except subprocess.TimeoutExpired:
            if stop.is_set():
                proc.kill()
                proc.wait()
                check_cancelled(stop)
    if proc.returncode != 0:
        lines = stderr.decode(errors="replace").strip().splitlines() or [f"exit status {proc.returncode}"]
        raise ImageError(f"qemu-img could not convert the qcow2 image: {lines[-1]}")


def decompress(src: Path, dest: Path, stop: threading.Event) -> None:
    """src (zstd, every frame checked first) decompressed into dest, zero blocks left as holes. The
    data must be a raw image: that is checked on its first bytes, before the rest is decompressed."""
    with open(src, "rb") as f:
        check_zstd_frames(f, os.fstat(f.fileno()).st_size)
        f.seek(0)
        reader = zstandard.ZstdDecompressor().stream_reader(f, read_across_frames=True, read_size=CHUNK)
        out = _open_new(dest)
        try:
            writer = SparseWriter(out)
            head = b""
            while chunk := reader.read(CHUNK):
                check_cancelled(stop)
                if len(head) < HEAD_SIZE:
                    head += chunk[: HEAD_SIZE - len(head)]
                    _check_inner(head, final=False)
                writer.write(chunk)
            _check_inner(head, final=True)
            writer.close()
        except zstandard.ZstdError as e:
            raise ImageError(f"the zstd data does not decompress: {e}") from None
        finally:
            os.close(out)


def _check_inner(head: bytes, final: bool) -> None:
    if len(head) < HEAD_SIZE and not final:
        return
    inner = sniff(head)
    if inner != RAW:
        raise ImageError(f"the zstd data holds a {inner} image; only raw images may be compressed")


__all__ = [
    "ImageStore",
    "SparseWriter",
    "Stored",
    "Upload",
    "decompress",
    "download",
    "extents",
    "is_url",
    "redact_url",
]
