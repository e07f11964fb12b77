"""The two questions the DHCP core asks the rest of bootforge, as small Protocols.

- `Reservations.reservation_for(mac)`: is this a known machine (a node's port), which node, and
  does it have a fixed address?
- `BootSource.boot_for(client, node_id)`: what should it boot now?

Both are synchronous lookups because they sit on the per-packet hot path: the conductor's
implementations answer from an in-memory view it keeps current, never from a query per packet.
The static implementations here serve the tests and the benchmark.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from ipaddress import IPv4Address
from typing import Protocol

from ._policy import ClientInfo

__all__ = [
    "LOADER_MISSING",
    "BootDecision",
    "BootSource",
    "NoBootFile",
    "Reservation",
    "Reservations",
    "StaticBootSource",
    "StaticReservations",
    "choose_boot",
]


@dataclass(frozen=True, slots=True)
class BootDecision:
    """`filename` is a TFTP path (with `next_server`) or an http(s) URL."""

    filename: str
    next_server: IPv4Address | None = None

    @property
    def is_url(self) -> bool:
        return self.filename.startswith(("http://", "https://"))


# The drop reason of a client whose boot loader bootforge knows it does not have.
LOADER_MISSING = "loader_missing"


@dataclass(frozen=True, slots=True)
class NoBootFile:
    """The client would get a boot file bootforge cannot serve (its loader is missing): offering it
    only makes the firmware fail TFTP and HTTP and drop to its shell. So no boot file is offered (full
    mode still offers the address; proxy mode does not answer), `reason` is counted as a drop, and
    `message` (what is missing, how to provide it) goes on the node's timeline."""

    reason: str
    message: str


@dataclass(frozen=True, slots=True)
class Reservation:
    """A known machine. `ip` None: give it a pool address."""

    node_id: str | None
    ip: IPv4Address | None = None
    hostname: str | None = None


class Reservations(Protocol):
    def reservation_for(self, mac: str) -> Reservation | None: ...


class BootSource(Protocol):
    def boot_for(self, client: ClientInfo, node_id: str | None) -> BootDecision | NoBootFile | None:
        """None: no boot information for this client (proxy mode then ignores it; full mode
        still leases it an address, so firmware moves on to its next boot device at once).
        NoBootFile: the same, but counted and told on the node's timeline."""
        ...


def choose_boot(
    client: ClientInfo,
    *,
    tftp_server: IPv4Address,
    http_base: str,
    ipxe_script_url: str,
    missing: Callable[[str], str | None] | None = None,
) -> BootDecision | NoBootFile | None:
    """The standard chain: raw firmware loads iPXE (TFTP, or HTTP for HTTP-boot firmware), and
    iPXE loads its script by HTTP. Order matters: an iPXE client also carries its firmware's
    arch, and answering it with a loader again is the classic endless chainload.

    `missing(loader)` says how to provide a loader bootforge lacks (None: it has it)."""
    if client.ipxe:
        return BootDecision(ipxe_script_url.format(mac=client.mac))
    arch = client.arch
    if arch is None or arch.loader is None:
        return None
    how = missing(arch.loader) if missing is not None else None
    if how is not None:
        return NoBootFile(
            LOADER_MISSING,
            f"no boot file offered to this {arch.name} client (DHCP architecture 0x{arch.code:02x}): "
            f"its boot loader {arch.loader} is missing; {how}",
        )
    if client.http_boot or arch.http:
        return BootDecision(f"{http_base.rstrip('/')}/{arch.loader}")
    return BootDecision(arch.loader, tftp_server)


@dataclass(frozen=True)
class StaticBootSource:
    """`choose_boot` for every client, or only for `macs` when given."""

    tftp_server: IPv4Address
    http_base: str
    ipxe_script_url: str  # may contain "{mac}"
    macs: frozenset[str] | None = None
    # loader name -> how to provide it, for the loaders this source does not have
    missing_loaders: Mapping[str, str] | None = None

    def boot_for(self, client: ClientInfo, node_id: str | None) -> BootDecision | NoBootFile | None:
        if self.macs is not None and client.mac not in self.macs:
            return None
        return choose_boot(
            client,
            tftp_server=self.tftp_server,
            http_base=self.http_base,
            ipxe_script_url=self.ipxe_script_url,
            missing=self.missing_loaders.get if self.missing_loaders is not None else None,
        )


@dataclass(frozen=True)
class StaticReservations:
    by_mac: Mapping[str, Reservation]

    def reservation_for(self, mac: str) -> Reservation | None:
        return self.by_mac.get(mac)
