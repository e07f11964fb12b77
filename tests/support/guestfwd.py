"""QEMU's user network relays a guest's connections to a server on the host's loopback.

guestfwd's `cmd:` form starts one relay process per guest connection, its stdin/stdout being QEMU's
end of that connection; the relay copies both ways to 127.0.0.1:PORT. Used by the tests that boot
the ramdisk in a VM with no bridge: the agent reaches a stand-in API on the host this way.
"""

from __future__ import annotations

import json
import sys
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

RELAY = r"""
import os, socket, sys, threading
up = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
def guest_to_server():
    while data := os.read(0, 65536):
        up.sendall(data)
    up.shutdown(socket.SHUT_WR)
threading.Thread(target=guest_to_server, daemon=True).start()
while data := up.recv(65536):
    os.write(1, data)
"""


def guest_forward(work: Path, port: int, guest_address: str = "10.0.2.100", guest_port: int = 6385) -> str:
    """The `-netdev user` option that sends the guest's connections to guest_address:guest_port on to
    127.0.0.1:`port`; the relay script is written into `work`."""
    relay = work / "relay.py"
    relay.write_text(RELAY)
    return f"guestfwd=tcp:{guest_address}:{guest_port}-cmd:{sys.executable} {relay} {port}"


class JsonHandler(BaseHTTPRequestHandler):
    """Base of the stand-in APIs the guest's agent talks to: quiet, keep-alive, JSON replies."""

    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _reply(self, status: int, body: Any = None) -> None:
        data = json.dumps(body).encode() if body is not None else b""
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
