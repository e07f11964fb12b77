"""Where write_image's bytes come from: the image over HTTP(S), optionally through `zstd -dc`.

A source is read from the reader thread; abort() wakes it from another thread (a blocked recv, a
blocked pipe), close() releases its descriptors once that thread is gone, finish() reports what
went wrong after the stream ended (zstd's exit status and message).
"""

from __future__ import annotations

import contextlib
import fcntl
import http.client
import os
import shutil
import socket
import subprocess
import tempfile
import threading
from typing import Any, Protocol
from urllib.parse import urlsplit

from .common import CommandError

__all__ = ["HttpImage", "Source", "Zstd", "zstd_binary"]

MiB = 1 << 20
READ = MiB  # one read from HTTP into zstd's pipe
HTTP_TIMEOUT_S = 60.0
JOIN_TIMEOUT_S = 10.0
F_SETPIPE_SZ = 1031  # <linux/fcntl.h>; a 1 MiB pipe cuts zstd's context switches 16-fold


def zstd_binary() -> str:
    zstd = shutil.which("zstd")
    if zstd is None:
        raise CommandError(
            "the image is zstd-compressed but the zstd program is not installed in the ramdisk"
        )
    return zstd


class Source(Protocol):
    def readinto(self, view: memoryview) -> int: ...
    def finish(self) -> None: ...
    def abort(self) -> None: ...
    def close(self) -> None: ...


class HttpImage:
    """The image's bytes as served (hashed as they arrive when given a hasher); a short or failed
    stream is an error."""

    def __init__(self, url: str, size: int | None, hasher: Any) -> None:
        self.url, self.hasher, self.received = url, hasher, 0
        self.conn = _connect(url)
        parts = urlsplit(url)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        # The socket, for abort(): a response that closes the connection takes it from conn.
        self.sock: socket.socket | None = None
        try:
            self.conn.request("GET", target, headers={"User-Agent": "bootforge-agent"})
            self.sock = self.conn.sock
            self.resp = self.conn.getresponse()
        except (OSError, http.client.HTTPException) as exc:
            self.conn.close()
            raise CommandError(f"image download from {self.url} failed: {_describe(exc)}") from exc
        if self.resp.status != 200:
            self.close()
            raise CommandError(
                f"image download from {self.url} failed: HTTP {self.resp.status} {self.resp.reason}"
            )
        length = self.resp.length
        if size is not None and length is not None and length != size:
            self.close()
            raise CommandError(f"the image at {self.url} is served as {length} bytes, expected {size}")
        self.expected = length if length is not None else size

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
        if self.sock is not None:
            # shutdown, unlike close, wakes a reader blocked in recv on another thread.
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.resp.close()
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


class Zstd:
    """The stream decompressed by `zstd -dc`: a feeder thread copies (and so hashes) the HTTP
    stream into its stdin; readinto reads its stdout."""

    def __init__(self, body: HttpImage, zstd: str) -> None:
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
