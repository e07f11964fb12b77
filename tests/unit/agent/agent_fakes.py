"""What several agent tests share: a clock they control, skips for missing tools, a loop device, an
HTTP server for images."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest


class FakeTime:
    """sleep() and clock() for code that takes them as parameters: sleeps are recorded, not slept."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    def clock(self) -> float:
        return self.now


def needs(program: str, package: str) -> None:
    if shutil.which(program) is None:
        pytest.skip(f"needs {program} (Debian package {package})")


@contextmanager
def attached_loop(backing: Path) -> Iterator[Path]:
    """`backing` as a loop device with partition scanning on, detached at the end; skips without root."""
    if os.geteuid() != 0:
        pytest.skip("needs root for a loop device")
    needs("losetup", "mount")
    made = subprocess.run(["losetup", "-f", "-P", "--show", str(backing)], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"needs a free loop device (losetup: {made.stderr.strip()})")
    device = Path(made.stdout.strip())
    try:
        yield device
    finally:
        subprocess.run(["losetup", "-d", str(device)], check=False)


MiB = 1 << 20


class ImageServer:
    """Serves the files of a directory on 127.0.0.1; records each request path. `short[name] = n`
    announces the whole file but sends only n bytes, then closes."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.requests: list[str] = []
        self.short: dict[str, int] = {}
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                name = self.path.lstrip("/")
                server.requests.append(name)
                path = server.root / name
                if not name or not path.is_file():
                    self.send_error(404)
                    return
                size = path.stat().st_size
                self.send_response(200)
                self.send_header("Content-Length", str(size))
                self.end_headers()
                with open(path, "rb") as f:
                    left = server.short.get(name, size)
                    while left > 0 and (block := f.read(min(MiB, left))):
                        self.wfile.write(block)
                        left -= len(block)
                self.close_connection = True

            def log_message(self, format: str, *args: Any) -> None:
                pass

        class Server(ThreadingHTTPServer):
            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # the agent hanging up mid-transfer is what several tests do on purpose

        self.httpd = Server(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/{name}"
