"""IPv6 router advertisements on the lab bridge, so iPXE need not wait for one that never comes.

iPXE configures IPv4 (DHCP) and IPv6 (router discovery) side by side and boots only when both are
done; with no router on the link, IPv6 gives up after about 13 s, on every network boot. This sends
an advertisement that says "no router here, no addresses, no DHCPv6" (router lifetime 0, no prefix,
M and O flags off) once a second on the bridge, inside the lab's namespace only. iPXE then finishes at
once, and so does any OS that listens. Run as ``python -m bootforge.lab.ra IFNAME [LABEL]``; LABEL
(the lab directory) only marks the process as the lab's, so `lab down` can find it by PID.
"""

from __future__ import annotations

import socket
import struct
import sys
import time
from pathlib import Path

__all__ = ["advertisement", "main"]

ALL_NODES = "ff02::1"
INTERVAL = 1.0


def advertisement(mac: bytes) -> bytes:
    """ICMPv6 router advertisement (RFC 4861 4.2); the kernel fills in the checksum."""
    # type, code, checksum, cur hop limit, flags (M=0, O=0), router lifetime 0, reachable, retrans
    header = struct.pack("!BBHBBHII", 134, 0, 0, 64, 0, 0, 0, 0)
    source_link_layer = struct.pack("!BB", 1, 1) + mac  # option 1, length 1 (8 bytes)
    return header + source_link_layer


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: python -m bootforge.lab.ra IFNAME [LABEL]", file=sys.stderr)
        return 2
    ifname = argv[0]
    mac = bytes.fromhex(Path(f"/sys/class/net/{ifname}/address").read_text().strip().replace(":", ""))
    index = socket.if_nametoindex(ifname)
    packet = advertisement(mac)
    with socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6) as sock:
        # RFC 4861: hosts drop advertisements whose hop limit is not 255.
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, index)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_LOOP, 0)
        while True:
            try:
                sock.sendto(packet, (ALL_NODES, 0, 0, index))
            except OSError as e:
                # The bridge's link-local address is tentative for a second or two after it comes up.
                print(f"router advertisement on {ifname} not sent yet: {e}", flush=True)
            time.sleep(INTERVAL)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
