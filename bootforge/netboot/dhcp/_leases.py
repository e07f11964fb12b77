"""Lease state machine (a table), the in-memory lease table, and the `LeaseStore` protocol.

Rules:
1. Every state change goes through `TRANSITIONS`; a pair missing from it is a protocol error
   (`LeaseTransitionError`), never a silent no-op.
2. The table says which transitions must be durable. An OFFER is not: losing it in a crash costs
   the client one retry. An ACK is: the reply is held until the store has committed it, so a
   client never uses an address the server could forget.
3. Time is a float passed in (`now`); nothing here reads a clock. Expiry is lazy (an expired
   lease is simply available) plus `sweep(now)`, which reports what expired.

The store is keyed by address: the newest record for an address replaces the older one, so taking
over an expired address needs no separate "expired" write.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address
from typing import Protocol

from ._options import DhcpError

__all__ = [
    "TRANSITIONS",
    "InMemoryLeaseStore",
    "Lease",
    "LeaseEvent",
    "LeaseRecord",
    "LeaseState",
    "LeaseStore",
    "LeaseTable",
    "LeaseTransitionError",
]


class LeaseState(enum.Enum):
    FREE = "free"
    OFFERED = "offered"
    BOUND = "bound"
    RELEASED = "released"
    DECLINED = "declined"
    EXPIRED = "expired"

    # Identity hashing: Enum's own __hash__ is Python code, and these key the hot-path tables.
    __hash__ = object.__hash__


class LeaseEvent(enum.Enum):
    OFFER = "offer"
    ACK = "ack"
    DECLINE = "decline"
    RELEASE = "release"
    EXPIRE = "expire"

    __hash__ = object.__hash__


S, E = LeaseState, LeaseEvent
# (state, event) -> (next state, needs a durable write before anyone is told)
TRANSITIONS: dict[tuple[LeaseState, LeaseEvent], tuple[LeaseState, bool]] = {
    (S.FREE, E.OFFER): (S.OFFERED, False),
    (S.RELEASED, E.OFFER): (S.OFFERED, False),
    (S.EXPIRED, E.OFFER): (S.OFFERED, False),
    (S.OFFERED, E.OFFER): (S.OFFERED, False),
    # A bound client that reboots and DISCOVERs again keeps its binding while we re-offer it.
    (S.BOUND, E.OFFER): (S.BOUND, False),
    (S.OFFERED, E.ACK): (S.BOUND, True),
    (S.BOUND, E.ACK): (S.BOUND, True),  # renewal, or INIT-REBOOT
    # The offer lapsed (or the lease expired) but nobody took the address: still ACK it.
    (S.FREE, E.ACK): (S.BOUND, True),
    (S.RELEASED, E.ACK): (S.BOUND, True),
    (S.EXPIRED, E.ACK): (S.BOUND, True),
    (S.OFFERED, E.DECLINE): (S.DECLINED, True),
    (S.BOUND, E.DECLINE): (S.DECLINED, True),
    (S.OFFERED, E.RELEASE): (S.RELEASED, False),
    (S.BOUND, E.RELEASE): (S.RELEASED, True),
    (S.OFFERED, E.EXPIRE): (S.FREE, False),
    (S.BOUND, E.EXPIRE): (S.EXPIRED, True),
    (S.DECLINED, E.EXPIRE): (S.FREE, True),
}
del S, E

# States whose `expires` is a deadline after which EXPIRE applies.
_TIMED = frozenset({LeaseState.OFFERED, LeaseState.BOUND, LeaseState.DECLINED})


class LeaseTransitionError(DhcpError):
    def __init__(self, state: LeaseState, event: LeaseEvent) -> None:
        super().__init__("bad_transition", f"{event.value} in state {state.value}")


@dataclass(slots=True)
class Lease:
    ip: int
    mac: str  # "" for a declined address: it belongs to nobody
    state: LeaseState = LeaseState.FREE
    expires: float = 0.0
    node_id: str | None = None

    def record(self) -> LeaseRecord:
        return LeaseRecord(IPv4Address(self.ip), self.mac, self.state, self.expires, self.node_id)


@dataclass(frozen=True, slots=True)
class LeaseRecord:
    """What the store persists; `expires` is on the clock the server passes in."""

    ip: IPv4Address
    mac: str
    state: LeaseState
    expires: float
    node_id: str | None = None


class LeaseStore(Protocol):
    """Durable leases. The server calls `commit` with every durable change of one batch (group
    commit) and sends the held ACKs only after it returns; a raise drops those ACKs."""

    async def load(self) -> Sequence[LeaseRecord]: ...

    async def commit(self, records: Sequence[LeaseRecord]) -> None: ...


class InMemoryLeaseStore:
    """For tests and the benchmark; counts batches so tests can see the grouping."""

    def __init__(self, records: Iterable[LeaseRecord] = ()) -> None:
        self.records: dict[IPv4Address, LeaseRecord] = {r.ip: r for r in records}
        self.batches: list[int] = []

    async def load(self) -> Sequence[LeaseRecord]:
        return list(self.records.values())

    async def commit(self, records: Sequence[LeaseRecord]) -> None:
        for record in records:
            self.records[record.ip] = record
        self.batches.append(len(records))


class LeaseTable:
    """All leases in memory, by address and by MAC. Not thread-safe; one event loop owns it."""

    def __init__(self, records: Iterable[LeaseRecord] = ()) -> None:
        self.by_ip: dict[int, Lease] = {}
        self.by_mac: dict[str, Lease] = {}
        self._cursor: dict[tuple[int, int], int] = {}
        for r in records:
            lease = Lease(int(r.ip), r.mac, r.state, r.expires, r.node_id)
            self.by_ip[lease.ip] = lease
            if r.mac and r.state is not LeaseState.DECLINED:
                self.by_mac[r.mac] = lease

    def apply(self, lease: Lease, event: LeaseEvent, now: float, hold: float) -> bool:
        """Run `event` on `lease`; `hold` is the time until the new state's deadline.
        Returns whether the change must be committed before it is announced."""
        self._settle(lease, now)
        try:
            state, durable = TRANSITIONS[(lease.state, event)]
        except KeyError:
            raise LeaseTransitionError(lease.state, event) from None
        if not (lease.state is LeaseState.BOUND and event is LeaseEvent.OFFER):
            lease.expires = now + hold
        lease.state = state
        if state is LeaseState.DECLINED and self.by_mac.get(lease.mac) is lease:
            del self.by_mac[lease.mac]
            lease.mac = ""
        return durable

    def _settle(self, lease: Lease, now: float) -> None:
        """Apply a lapsed deadline before anything else happens to the lease."""
        if lease.state in _TIMED and lease.expires <= now:
            lease.state = TRANSITIONS[(lease.state, LeaseEvent.EXPIRE)][0]

    def available(self, ip: int, mac: str, now: float) -> bool:
        lease = self.by_ip.get(ip)
        if lease is None or lease.state not in _TIMED or lease.expires <= now:
            return True
        return lease.mac == mac  # a live offer or binding: only for its owner

    def claim(self, ip: int, mac: str, node_id: str | None, now: float) -> Lease:
        """The lease for `mac` at `ip`, taking the address over if needed (call `available`
        first)."""
        lease = self.by_ip.get(ip)
        if lease is None or lease.mac != mac:
            if lease is not None:
                self._settle(lease, now)
                if self.by_mac.get(lease.mac) is lease:
                    del self.by_mac[lease.mac]
            lease = Lease(ip, mac)
            self.by_ip[ip] = lease
        lease.node_id = node_id
        self.by_mac[mac] = lease
        return lease

    def find_free(self, first: int, last: int, mac: str, now: float) -> int | None:
        """Next available address in [first, last], round robin so that freed addresses are
        not reused at once (a released address may still be in some ARP cache)."""
        key = (first, last)
        start = self._cursor.get(key, first)
        size = last - first + 1
        for step in range(size):
            ip = first + (start - first + step) % size
            if self.available(ip, mac, now):
                self._cursor[key] = first + (ip - first + 1) % size
                return ip
        return None

    def sweep(self, now: float) -> list[tuple[Lease, bool]]:
        """Apply EXPIRE to every lease past its deadline; returns (lease, durable) pairs."""
        changed = []
        for lease in self.by_ip.values():
            if lease.state in _TIMED and lease.expires <= now:
                state, durable = TRANSITIONS[(lease.state, LeaseEvent.EXPIRE)]
                lease.state = state
                changed.append((lease, durable))
        return changed
