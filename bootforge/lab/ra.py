"""IPv6 router advertisements on the lab bridge.

Without ``--managed`` (an IPv4 lab): iPXE configures IPv4 (DHCP) and IPv6 (router discovery) side
by side and boots only when both are done; with no router on the link, IPv6 gives up after about
13 s, on every network boot. The advertisement then says "no router here, no addresses, no DHCPv6"
(router lifetime 0, no prefix, M and O flags off), and iPXE finishes at once.

With ``--managed PREFIX`` (an IPv6 lab, `lab up --ipv6`): the Managed and Other flags are set, so
UEFI PXE, iPXE and other clients ask DHCPv6 (bootforge's) for an address and the boot file URL, and
the prefix is announced on-link and autonomous, so the Linux ramdisk (which runs no DHCPv6 client)
configures an address itself (SLAAC). The router lifetime stays 0: nothing routes off the bridge.

Sent once a second on the bridge, inside the lab's namespace only. Run as
``python -m bootforge.lab.ra IFNAME [LABEL] [--managed PREFIX]``; LABEL (the lab directory) only
marks the process as the lab's, so `lab down` can find it by PID.
"""

from __future__ import annotations

import socket
import struct
import sys
import time
from ipaddress import IPv6Network
from pathlib import Path

__all__ = ["advertisement", "main"]

ALL_NODES = "ff02::1"
INTERVAL = 1.0
_MANAGED, _OTHER = 0x80, 0x40
_ON_LINK, _AUTONOMOUS = 0x80, 0x40


def advertisement(mac: bytes, managed: IPv6Network | None = None) -> bytes:
    """ICMPv6 router advertisement (RFC 4861 4.2); the kernel fills in the checksum."""
    flags = _MANAGED | _OTHER if managed is not None else 0
    # type, code, checksum, cur hop limit, flags, router lifetime 0, reachable, retrans
    header = struct.pack("!BBHBBHII", 134, 0, 0, 64, flags, 0, 0, 0)
    source_link_layer = struct.pack("!BB", 1, 1) + mac  # option 1, length 1 (8 bytes)
    if managed is None:
        return header + source_link_layer
    # Prefix Information (RFC 4861 4.6.2): option 3, length 4 (32 bytes); lifetimes in seconds.
    prefix = struct.pack(
        "!BBBBIII16s",
        3, 4, managed.prefixlen, _ON_LINK | _AUTONOMOUS, 3600, 1800, 0, managed.network_address.packed,
    )  # fmt: skip
    return header + source_link_layer + prefix


def main(argv: list[str]) -> int:
    managed: IPv6Network | None = None
    if "--managed" in argv:
        at = argv.index("--managed")
        if at + 1 >= len(argv):
            print("--managed needs a prefix (fd77::/64)", file=sys.stderr)
            return 2
        managed = IPv6Network(argv[at + 1])
        if managed.prefixlen != 64:
            print("--managed: SLAAC needs a /64 prefix", file=sys.stderr)
            return 2
        argv = argv[:at] + argv[at + 2 :]
    if not argv:
        print("usage: python -m bootforge.lab.ra IFNAME [LABEL] [--managed PREFIX]", file=sys.stderr)
        return 2
    ifname = argv[0]
    mac = bytes.fromhex(Path(f"/sys/class/net/{ifname}/address").read_text().strip().replace(":", ""))
    index = socket.if_nametoindex(ifname)
    packet = advertisement(mac, managed)
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
