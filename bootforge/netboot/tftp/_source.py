# Where transfer bytes come from: the FileSource protocol, a root-confined filesystem source with a
# hook for per-client virtual files, and the pure path rules every source relies on.
#
# Rules for this file:
#   1. normalize_path() is the first gate and is pure: it maps what a client asked for onto a
#      relative POSIX path or raises PathRefused. Leading slashes are stripped, not refused, because
#      GRUB asks for "/grub/grub.cfg"; ".." components are refused rather than resolved, so a
#      request either names a file under the root or fails loudly.
#   2. FileSystemSource is the second gate: after resolving symlinks the path must still be under
#      the root, and the final component is opened with O_NOFOLLOW, so a symlink swapped in after
#      the check is refused too. Symlinks that stay inside the root are allowed (distributions ship
#      them, e.g. grubx64.efi -> grubnetx64.efi.signed).
#   3. Sources signal "no such file" with FileNotFoundError and "not allowed" with PermissionError;
#      the transfer maps those to ERROR 1 and ERROR 2.
#   4. Readers are scatter readers (readinto_at takes a list of buffers, like os.preadv) because
#      the transfer fills a whole window of DATA payloads with one call and no allocation.
#   5. netascii is converted as it is read (NetasciiReadable), never a whole file at a time: a
#      transfer holds one converted chunk and an index of 8 bytes per chunk of the file, however
#      large the file and however many clients ask for it.

from __future__ import annotations

import bisect
import errno
import os
import stat
from array import array
from collections.abc import Callable, Sequence
from typing import Protocol

__all__ = [
    "BytesReadable",
    "ClientAddress",
    "FileReadable",
    "FileSource",
    "FileSystemSource",
    "NetasciiReadable",
    "PathRefused",
    "Readable",
    "VirtualFiles",
    "netascii_encode",
    "normalize_path",
]

ClientAddress = tuple[str, int]
# Called with the normalized path and the client; returns the rendered file or None when the path
# is not virtual for that client (the filesystem is then tried).
VirtualFiles = Callable[[str, ClientAddress], bytes | None]


class PathRefused(PermissionError):
    """The requested name is outside what a TFTP client may read."""


class Readable(Protocol):
    @property
    def size(self) -> int: ...

    def read_at(self, offset: int, n: int) -> bytes: ...

    def readinto_at(self, buffers: Sequence[memoryview], offset: int) -> int:
        """Fill buffers in order with the bytes at offset; return the byte count (short at EOF)."""
        ...

    def close(self) -> None: ...


class FileSource(Protocol):
    def open(self, path: str, client: ClientAddress) -> Readable:
        """path is already normalized; raise FileNotFoundError or PermissionError to refuse."""
        ...


def normalize_path(filename: str) -> str:
    """Map a requested filename to a relative path under the TFTP root, or raise PathRefused."""
    # PXE ROMs built for Windows servers send backslashes (pxelinux.cfg\default); treat them as
    # separators so they cannot hide a ".." from the check below.
    parts = [p for p in filename.replace("\\", "/").split("/") if p not in ("", ".")]
    if not parts:
        raise PathRefused(f"empty path {filename!r}")
    if ".." in parts:
        raise PathRefused(f"parent reference in {filename!r}")
    return "/".join(parts)


class BytesReadable:
    """An in-memory file: rendered virtual files and netascii conversions."""

    def __init__(self, data: bytes) -> None:
        self._data = memoryview(data)

    @property
    def size(self) -> int:
        return len(self._data)

    def read_at(self, offset: int, n: int) -> bytes:
        return bytes(self._data[offset : offset + n])

    def readinto_at(self, buffers: Sequence[memoryview], offset: int) -> int:
        total = 0
        for buf in buffers:
            chunk = self._data[offset + total : offset + total + len(buf)]
            buf[: len(chunk)] = chunk
            total += len(chunk)
            if len(chunk) < len(buf):
                break
        return total

    def close(self) -> None:
        self._data.release()


class FileReadable:
    """An open regular file read with pread/preadv, so concurrent transfers share no offset."""

    def __init__(self, fd: int, size: int) -> None:
        self._fd = fd
        self._size = size

    @property
    def size(self) -> int:
        return self._size

    def fileno(self) -> int:
        """The descriptor, for a data plane that reads the file outside Python; -1 once closed."""
        return self._fd

    def read_at(self, offset: int, n: int) -> bytes:
        return os.pread(self._fd, n, offset)

    def readinto_at(self, buffers: Sequence[memoryview], offset: int) -> int:
        # A regular file only reads short at its end (Python retries EINTR); if it ever reads
        # short elsewhere, the transfer sees the count and fails cleanly rather than send junk.
        return os.preadv(self._fd, buffers, offset)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def netascii_encode(data: bytes) -> bytes:
    """RFC 764 line endings: CR becomes CR NUL, then LF becomes CR LF."""
    return data.replace(b"\r", b"\r\0").replace(b"\n", b"\r\n")


class NetasciiReadable:
    """Another Readable as RFC 764 netascii, converted chunk by chunk as it is read (rule 5).

    The converted size (what tsize announces, and what says which block is the last) is counted
    at construction in one pass over the file, a chunk at a time; the pass also records where each
    chunk of the file starts in the converted stream, so a read at any offset converts only the
    chunks it touches. The conversion is byte for byte (CR -> CR NUL, LF -> CR LF, nothing else
    changes), so a chunk converts the same on its own as inside the whole file. A file whose
    chunks no longer convert to the counted lengths (it changed) reads as an OSError. Takes
    ownership of `inner`: close() closes it, and so does a failed construction.
    """

    def __init__(self, inner: Readable, chunk: int = 16 * 1024) -> None:
        self._inner = inner
        self._chunk = chunk
        self._cached_index = -1
        self._cached = b""
        try:
            # starts[i]: where chunk i begins in the converted stream; starts[-1]: its size.
            self._starts = starts = array("Q", [0])
            size = 0
            for offset in range(0, inner.size, chunk):
                data = inner.read_at(offset, chunk)
                if len(data) != min(chunk, inner.size - offset):
                    raise OSError(errno.EIO, "file changed while reading")
                size += len(data) + data.count(b"\r") + data.count(b"\n")
                starts.append(size)
        except BaseException:
            inner.close()
            raise
        self._size = size

    @property
    def size(self) -> int:
        return self._size

    def read_at(self, offset: int, n: int) -> bytes:
        buffer = bytearray(max(0, min(n, self._size - offset)))
        got = self.readinto_at([memoryview(buffer)], offset)
        return bytes(buffer[:got])

    def readinto_at(self, buffers: Sequence[memoryview], offset: int) -> int:
        total, position = 0, offset
        for buf in buffers:
            filled, wanted = 0, len(buf)
            while filled < wanted and position < self._size:
                index = bisect.bisect_right(self._starts, position) - 1
                chunk = self._converted(index)
                at = position - self._starts[index]
                piece = chunk[at : at + wanted - filled]
                buf[filled : filled + len(piece)] = piece
                filled += len(piece)
                position += len(piece)
            total += filled
            if filled < wanted:
                break
        return total

    def _converted(self, index: int) -> memoryview:
        if index != self._cached_index:
            self._cached_index = -1
            data = netascii_encode(self._inner.read_at(index * self._chunk, self._chunk))
            if len(data) != self._starts[index + 1] - self._starts[index]:
                raise OSError(errno.EIO, "file changed while reading")
            self._cached, self._cached_index = data, index
        return memoryview(self._cached)

    def close(self) -> None:
        self._cached, self._cached_index = b"", -1
        self._inner.close()


class FileSystemSource:
    """Serve regular files under root, read-only; virtual files win over files on disk."""

    def __init__(self, root: str | os.PathLike[str], virtual: VirtualFiles | None = None) -> None:
        self._root = os.path.realpath(root)
        self._virtual = virtual

    @property
    def root(self) -> str:
        return self._root

    def open(self, path: str, client: ClientAddress) -> Readable:
        path = normalize_path(path)
        if self._virtual is not None:
            rendered = self._virtual(path, client)
            if rendered is not None:
                return BytesReadable(rendered)
        real = os.path.realpath(os.path.join(self._root, path))
        if real != self._root and not real.startswith(self._root + os.sep):
            raise PathRefused(f"{path!r} resolves outside the TFTP root")
        return self._open_regular(real)

    @staticmethod
    def _open_regular(real: str) -> FileReadable:
        # O_NONBLOCK keeps a FIFO planted in the root from hanging the event loop on open().
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
        try:
            fd = os.open(real, flags)
        except OSError as exc:
            if exc.errno == errno.ELOOP:  # the last component became a symlink after realpath
                raise PathRefused(f"{real!r} is a symlink") from None
            raise
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise FileNotFoundError(f"{real!r} is not a regular file")
        except BaseException:
            os.close(fd)
            raise
        return FileReadable(fd, info.st_size)
