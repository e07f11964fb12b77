"""Configuration of the DHCP core and server, as plain frozen dataclasses.

The application settings are mapped onto these by the composition root; this package never reads
files or environment variables.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network

__all__ = ["DhcpConfig", "Interface", "Mode", "Pool", "Subnet", "UnknownClients"]


class Mode(enum.Enum):
    FULL = "full"  # we lease addresses
    PROXY = "proxy"  # the site's DHCP server leases addresses; we add boot information only

    __hash__ = object.__hash__  # Enum's __hash__ is Python code; this keys the handler table


class UnknownClients(enum.Enum):
    IGNORE = "ignore"
    DISCOVER = "discover"  # serve them; the BootSource sees node_id=None (auto-enrolment)


@dataclass(frozen=True)
class Pool:
    first: IPv4Address
    last: IPv4Address

    def __post_init__(self) -> None:
        if int(self.first) > int(self.last):
            raise ValueError(f"pool {self.first}-{self.last} is empty")


@dataclass(frozen=True)
class Subnet:
    network: IPv4Network
    pools: tuple[Pool, ...] = ()
    routers: tuple[IPv4Address, ...] = ()
    dns_servers: tuple[IPv4Address, ...] = ()
    domain_name: str | None = None
    lease_time: int = 3600
    mtu: int | None = None
    extra_options: tuple[tuple[int, bytes], ...] = ()

    def __post_init__(self) -> None:
        for pool in self.pools:
            if pool.first not in self.network or pool.last not in self.network:
                raise ValueError(f"pool {pool.first}-{pool.last} is outside {self.network}")
        if self.lease_time < 60:
            raise ValueError("lease_time below 60 s makes clients renew constantly")


@dataclass(frozen=True)
class DhcpConfig:
    mode: Mode
    # Interfaces to serve, by name. Required: there is deliberately no "all interfaces" default,
    # because answering DHCP on the wrong segment breaks someone else's network.
    interfaces: tuple[str, ...]
    subnets: tuple[Subnet, ...] = ()
    unknown_clients: UnknownClients = UnknownClients.IGNORE
    # With DISCOVER: unknown clients are served only when their link (relay, or the interface they
    # came in on) is inside one of these networks (discovery.subnets); empty: on every link.
    unknown_networks: tuple[IPv4Network, ...] = ()
    offer_hold: float = 30.0  # seconds an offered address stays reserved for the client
    decline_hold: float = 600.0  # seconds a declined (conflicting) address is quarantined
    max_hops: int = 16
    # Proxy mode: arch codes whose offers carry PXE discovery control "06 01 08" (boot the file
    # in this offer). Others get a BINL offer and ask us again on port 4011; Pixiecore found that
    # many UEFI firmwares fail to chainload from a direct proxy offer.
    proxy_bypass_archs: frozenset[int] = field(default_factory=lambda: frozenset({0}))

    def __post_init__(self) -> None:
        if not self.interfaces:
            raise ValueError("name the interfaces to serve; there is no default")
        if self.mode is Mode.FULL and not self.subnets:
            raise ValueError("full mode needs at least one subnet")


@dataclass(frozen=True, slots=True)
class Interface:
    """A served interface as the server found it (address and MTU read from the system)."""

    name: str
    address: IPv4Address
    mtu: int = 1500
