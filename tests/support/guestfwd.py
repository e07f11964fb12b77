"""QEMU's user network relays a guest's connections to a server on the host's loopback.

guestfwd's `cmd:` form starts one relay process per guest connection, its stdin/stdout being QEMU's
end of that connection; the relay copies both ways to 127.0.0.1:PORT. Used by the tests that boot
the ramdisk in a VM with no bridge: the agent reaches a stand-in API on the host this way.
"""

from __future__ import annotations

import sys
from pathlib import Path

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
