"""Static network configuration from the kernel command line, for networks without DHCP.

A node booted from bootforge's virtual-media ISO may sit on a network where bootforge runs no DHCP
server (and nobody else does). The conductor then writes the node's static configuration (from its
``network_data``) into the ISO's kernel command line as one parameter, and the ramdisk's /init runs
``python3 -m bootforge_agent.netconfig`` instead of udhcpc when it is there.

The encoding, ``bootforge.net=ITEM[,ITEM...]``, each item ``KEY=VALUE`` (only characters bootforge's
boot scripts accept in a kernel argument: no spaces, quotes or ``$``)::

    mac=MAC               starts an interface: the NIC with that MAC. The items up to the next mac=
                          belong to it.
    ip=ADDR/PREFIX        an address on it (IPv4 or IPv6); repeatable
    gw=ADDR               the default route through it (one per address family)
    route=NET/PREFIX@GW   another route through it; repeatable
    mtu=N                 its MTU
    dns=ADDR              a name server (for the whole machine, wherever it is written); repeatable

For example ``bootforge.net=mac=52:54:00:77:00:01,ip=10.77.0.11/24,gw=10.77.0.1,dns=10.77.0.1``.
:func:`encode` writes the canonical form (lower-case MACs, compressed IPv6), which :func:`parse`
reads back to an equal value.

Standard library only (this runs in the ramdisk before the agent), and nothing that waits for the
kernel's random pool: /init runs it while the pool may still be filling.
"""

from __future__ import annotations

import ipaddress
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

PARAM = "bootforge.net"
KEYS = ("mac", "ip", "gw", "route", "mtu", "dns")
NIC_WAIT = 30.0  # seconds a named NIC may take to appear (a real NIC's driver probes slowly)

_HEX = frozenset("0123456789abcdef")


class NetConfigError(ValueError):
    """The bootforge.net parameter cannot be understood; the message names the item."""


@dataclass(frozen=True)
class Route:
    network: str  # canonical "10.0.0.0/8" or "2001:db8::/32"
    gateway: str


@dataclass(frozen=True)
class Interface:
    mac: str
    addresses: tuple[str, ...] = ()  # canonical "10.77.0.11/24"
    gateways: tuple[str, ...] = ()
    routes: tuple[Route, ...] = ()
    mtu: int | None = None


@dataclass(frozen=True)
class StaticNet:
    interfaces: tuple[Interface, ...]
    dns: tuple[str, ...] = field(default=())


# -- canonical forms (shared by encode, parse and the conductor's network_data reader) ------------


def canonical_mac(value: str) -> str:
    parts = value.strip().lower().replace("-", ":").split(":")
    if len(parts) != 6 or any(len(p) != 2 or not set(p) <= _HEX for p in parts):
        raise NetConfigError(f"not a MAC address: {value!r}")
    return ":".join(parts)


def canonical_address(value: str) -> str:
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise NetConfigError(f"not an IP address: {value!r}") from None


def canonical_interface(value: str) -> str:
    """ADDR/PREFIX with the host part kept (10.77.0.11/24); the prefix is required."""
    if "/" not in value:
        raise NetConfigError(f"address {value!r} has no /PREFIX")
    try:
        return ipaddress.ip_interface(value).with_prefixlen
    except ValueError:
        raise NetConfigError(f"not an ADDR/PREFIX: {value!r}") from None


def canonical_network(value: str) -> str:
    try:
        return ipaddress.ip_network(value, strict=True).with_prefixlen
    except ValueError:
        raise NetConfigError(f"not a NET/PREFIX with its host bits zero: {value!r}") from None


def _family(address: str) -> int:
    return ipaddress.ip_address(address.split("/")[0]).version


# -- encoding --------------------------------------------------------------------------------------


def encode(net: StaticNet) -> str:
    """The value of bootforge.net for `net` (see the module doc); NetConfigError if it has no interface."""
    if not net.interfaces:
        raise NetConfigError("a static network needs at least one interface")
    items: list[str] = []
    for nic in net.interfaces:
        items.append(f"mac={canonical_mac(nic.mac)}")
        items += [f"ip={canonical_interface(a)}" for a in nic.addresses]
        items += [f"gw={canonical_address(g)}" for g in nic.gateways]
        items += [f"route={canonical_network(r.network)}@{canonical_address(r.gateway)}" for r in nic.routes]
        if nic.mtu is not None:
            items.append(f"mtu={_mtu(str(nic.mtu))}")
    items += [f"dns={canonical_address(d)}" for d in net.dns]
    return ",".join(items)


def parse(value: str) -> StaticNet:
    """Read a bootforge.net value; NetConfigError names the first item that is wrong."""
    nics: list[dict[str, list[str]]] = []
    dns: list[str] = []
    for n, item in enumerate(value.split(","), 1):
        key, sep, text = item.partition("=")
        where = f"item {n} ({item!r})"
        if not sep or key not in KEYS:
            raise NetConfigError(f"{PARAM}: {where} is not KEY=VALUE with KEY one of {', '.join(KEYS)}")
        try:
            if key == "dns":
                dns.append(canonical_address(text))
            elif key == "mac":
                nics.append({"mac": [canonical_mac(text)]})
            elif not nics:
                raise NetConfigError(f"{key}= comes before any mac=")
            else:
                nics[-1].setdefault(key, []).append(_item(key, text))
        except NetConfigError as e:
            raise NetConfigError(f"{PARAM}: {where}: {e}") from None
    if not nics:
        raise NetConfigError(f"{PARAM}: names no interface (no mac= item)")
    return StaticNet(tuple(_interface(nic) for nic in nics), tuple(dns))


def _item(key: str, text: str) -> str:
    if key == "ip":
        return canonical_interface(text)
    if key == "gw":
        return canonical_address(text)
    if key == "route":
        net, at, gw = text.partition("@")
        if not at:
            raise NetConfigError("a route is NET/PREFIX@GATEWAY")
        return f"{canonical_network(net)}@{canonical_address(gw)}"
    return str(_mtu(text))


def _mtu(text: str) -> int:
    if not text.isdigit() or not 68 <= int(text) <= 65535:
        raise NetConfigError(f"MTU must be a number in [68, 65535], not {text!r}")
    return int(text)


def _interface(items: dict[str, list[str]]) -> Interface:
    mac = items["mac"][0]
    gateways = tuple(items.get("gw", []))
    families = [_family(g) for g in gateways]
    if len(set(families)) != len(families):
        raise NetConfigError(f"{PARAM}: interface {mac} has two default gateways of one address family")
    mtus = items.get("mtu", [])
    if len(mtus) > 1:
        raise NetConfigError(f"{PARAM}: interface {mac} has more than one mtu=")
    routes = tuple(Route(*r.split("@")) for r in items.get("route", []))
    return Interface(mac, tuple(items.get("ip", [])), gateways, routes, int(mtus[0]) if mtus else None)


# -- applying it -----------------------------------------------------------------------------------


def commands(net: StaticNet, ifnames: dict[str, str]) -> list[list[str]]:
    """The `ip` commands (busybox's or iproute2's) that set `net` up; `ifnames` maps MAC -> name."""
    argv: list[list[str]] = [["ip", "link", "set", "lo", "up"]]
    for nic in net.interfaces:
        dev = ifnames[nic.mac]
        if nic.mtu is not None:
            argv.append(["ip", "link", "set", "dev", dev, "mtu", str(nic.mtu)])
        argv.append(["ip", "link", "set", "dev", dev, "up"])
        argv.append(["ip", "-4", "addr", "flush", "dev", dev])  # whatever an earlier attempt left
        for address in nic.addresses:
            # nodad: duplicate address detection would hold an IPv6 address back for seconds.
            extra = ["nodad"] if _family(address) == 6 else []
            argv.append(["ip", f"-{_family(address)}", "addr", "add", address, "dev", dev, *extra])
        for route in nic.routes:
            family = f"-{_family(route.gateway)}"
            argv.append(["ip", family, "route", "replace", route.network, "via", route.gateway, "dev", dev])
        for gateway in nic.gateways:
            family = f"-{_family(gateway)}"
            argv.append(["ip", family, "route", "replace", "default", "via", gateway, "dev", dev])
    return argv


def resolv_conf(net: StaticNet) -> str:
    return "".join(f"nameserver {d}\n" for d in net.dns)


def find_nics(
    net: StaticNet,
    list_macs: Callable[[], dict[str, str]],
    timeout: float = NIC_WAIT,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, str]:
    """MAC -> interface name for every interface of `net`, waiting up to `timeout` for them to appear."""
    deadline = clock() + timeout
    while True:
        found = list_macs()
        missing = [nic.mac for nic in net.interfaces if nic.mac not in found]
        if not missing:
            return {nic.mac: found[nic.mac] for nic in net.interfaces}
        if clock() >= deadline:
            have = ", ".join(f"{name} {mac}" for mac, name in sorted(found.items())) or "none"
            raise NetConfigError(f"no NIC has the MAC {', '.join(missing)} (NICs: {have})")
        sleep(0.2)


def system_macs(root: str = "/") -> dict[str, str]:
    """MAC -> name of the machine's network interfaces (lo and all-zero MACs left out)."""
    base = os.path.join(root, "sys", "class", "net")
    found: dict[str, str] = {}
    try:
        names = sorted(os.listdir(base))
    except OSError:
        return found
    for name in names:
        try:
            with open(os.path.join(base, name, "address")) as f:
                mac = f.read().strip().lower()
        except OSError:
            continue
        if name != "lo" and mac.strip("0:"):
            found.setdefault(mac, name)
    return found


def apply(
    net: StaticNet,
    run: Callable[[Sequence[str]], None],
    list_macs: Callable[[], dict[str, str]],
    etc: str = "/etc",
    state: str = "/run",
) -> list[str]:
    """Set `net` up; return one line per interface for the console."""
    ifnames = find_nics(net, list_macs)
    for argv in commands(net, ifnames):
        run(argv)
    if net.dns:
        with open(os.path.join(etc, "resolv.conf"), "w") as f:
            f.write(resolv_conf(net))
    ipv4 = [a for nic in net.interfaces for a in nic.addresses if _family(a) == 4]
    if ipv4:
        # What udhcpc's hook writes: /init prints it as "network up: ...".
        with open(os.path.join(state, "ipv4"), "w") as f:
            f.write(ipv4[0] + "\n")
    return [
        f"{ifnames[nic.mac]} ({nic.mac}): {' '.join(nic.addresses) or 'no address'}"
        + (f", gateway {' '.join(nic.gateways)}" if nic.gateways else "")
        for nic in net.interfaces
    ]


def _run(argv: Sequence[str]) -> None:
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=30, check=False)
    if proc.returncode != 0:
        raise NetConfigError(f"{' '.join(argv)} failed: {proc.stderr.strip() or proc.returncode}")


def main(argv: list[str] | None = None) -> int:
    """Exit 0 when the static network is up, 1 when there is none to set up, 2 when it failed."""
    from .cmdline import read

    value = read().get(PARAM, "") if not argv else argv[0]
    if not value:
        print(f"bootforge-netconfig: no {PARAM}= on the kernel command line", file=sys.stderr)
        return 1
    try:
        net = parse(value)
        lines = apply(net, _run, system_macs)
    except (NetConfigError, OSError, subprocess.SubprocessError) as e:
        print(f"bootforge-netconfig: {e}", file=sys.stderr)
        return 2
    for line in lines:
        print(f"bootforge-netconfig: static {line}")
    if net.dns:
        print(f"bootforge-netconfig: name servers {' '.join(net.dns)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
