"""DHCPv6 leases: one address per (DUID, IAID), the state table, and the `Lease6Store` protocol.

Rules (as the DHCPv4 table's):
1. Every state change goes through `TRANSITIONS`; a pair missing from it raises `Lease6TransitionError`.
2. An advertised address is not durable (losing it costs the client one SOLICIT); a bound one is,
   and the REPLY that binds it is held until the store has committed the record.
3. `now` is passed in; expiry is lazy (an expired lease is free) plus `sweep(now)`.
4. The table is bounded (`max_leases`): strangers rotating DUIDs cannot grow it without limit; when
   it is full, expired and released leases are reclaimed first, then the request is refused.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from ipaddress import IPv6Address
from typing import Protocol

from ._codec import Dhcp6Error

__all__ = [
    "TRANSITIONS",
    "InMemoryLease6Store",
    "Lease6",
    "Lease6Event",
    "Lease6Record",
    "Lease6State",
    "Lease6Store",
    "Lease6Table",
    "Lease6TransitionError",
]


class Lease6State(enum.Enum):
    FREE = "free"
    ADVERTISED = "advertised"
    BOUND = "bound"
    RELEASED = "released"
    DECLINED = "declined"
    EXPIRED = "expired"


class Lease6Event(enum.Enum):
    ADVERTISE = "advertise"
    BIND = "bind"  # REPLY to REQUEST / RENEW / REBIND, or a rapid-commit SOLICIT
    RELEASE = "release"
    DECLINE = "decline"
    EXPIRE = "expire"


S, E = Lease6State, Lease6Event
# (state, event) -> (new state, must the change be durable before the reply goes out)
TRANSITIONS: dict[tuple[Lease6State, Lease6Event], tuple[Lease6State, bool]] = {
    (S.FREE, E.ADVERTISE): (S.ADVERTISED, False),
    (S.FREE, E.BIND): (S.BOUND, True),
    (S.ADVERTISED, E.ADVERTISE): (S.ADVERTISED, False),
    (S.ADVERTISED, E.BIND): (S.BOUND, True),
    (S.ADVERTISED, E.EXPIRE): (S.FREE, False),
    (S.ADVERTISED, E.DECLINE): (S.DECLINED, True),
    (S.BOUND, E.ADVERTISE): (S.BOUND, False),  # a SOLICIT while bound: same address, lease kept
    (S.BOUND, E.BIND): (S.BOUND, True),
    (S.BOUND, E.RELEASE): (S.RELEASED, True),
    (S.BOUND, E.DECLINE): (S.DECLINED, True),
    (S.BOUND, E.EXPIRE): (S.EXPIRED, True),
    (S.RELEASED, E.ADVERTISE): (S.ADVERTISED, False),
    (S.RELEASED, E.BIND): (S.BOUND, True),
    (S.EXPIRED, E.ADVERTISE): (S.ADVERTISED, False),
    (S.EXPIRED, E.BIND): (S.BOUND, True),
    (S.DECLINED, E.EXPIRE): (S.EXPIRED, True),
}


class Lease6TransitionError(Dhcp6Error):
    def __init__(self, state: Lease6State, event: Lease6Event) -> None:
        super().__init__("bad_transition", f"{event.value} in state {state.value}")


@dataclass(frozen=True, slots=True)
class Lease6Record:
    """What the store keeps: one address, who holds it, and until when."""

    ip: IPv6Address
    duid: bytes
    iaid: int
    state: Lease6State
    expires: float
    mac: str | None = None
    node_id: str | None = None


class Lease6Store(Protocol):
    def load(self) -> Sequence[Lease6Record]: ...
    def commit(self, records: Sequence[Lease6Record]) -> None: ...


class InMemoryLease6Store:
    """For tests and the benchmark: records keyed by address, newest wins."""

    def __init__(self) -> None:
        self.records: dict[IPv6Address, Lease6Record] = {}

    def load(self) -> Sequence[Lease6Record]:
        return list(self.records.values())

    def commit(self, records: Sequence[Lease6Record]) -> None:
        for record in records:
            self.records[record.ip] = record


class Lease6:
    __slots__ = ("duid", "expires", "iaid", "ip", "mac", "node_id", "state")

    def __init__(self, ip: int, duid: bytes, iaid: int, mac: str | None, node_id: str | None) -> None:
        self.ip, self.duid, self.iaid, self.mac, self.node_id = ip, duid, iaid, mac, node_id
        self.state = Lease6State.FREE
        self.expires = 0.0

    def record(self) -> Lease6Record:
        return Lease6Record(
            IPv6Address(self.ip), self.duid, self.iaid, self.state, self.expires, self.mac, self.node_id
        )

    def live(self, now: float) -> bool:
        """Whether the address is taken (by its holder) at `now`."""
        return self.state in (S.ADVERTISED, S.BOUND, S.DECLINED) and self.expires > now


class Lease6Table:
    def __init__(self, records: Iterable[Lease6Record] = (), max_leases: int = 65536) -> None:
        self.max_leases = max_leases
        self.by_ip: dict[int, Lease6] = {}
        self.by_client: dict[tuple[bytes, int], Lease6] = {}
        for r in records:
            lease = Lease6(int(r.ip), r.duid, r.iaid, r.mac, r.node_id)
            lease.state, lease.expires = r.state, r.expires
            self._put(lease)

    def _put(self, lease: Lease6) -> None:
        old = self.by_ip.get(lease.ip)
        if old is not None and self.by_client.get((old.duid, old.iaid)) is old:
            del self.by_client[(old.duid, old.iaid)]
        self.by_ip[lease.ip] = lease
        self.by_client[(lease.duid, lease.iaid)] = lease

    def binding(self, duid: bytes, iaid: int) -> Lease6 | None:
        return self.by_client.get((duid, iaid))

    def available(self, ip: int, duid: bytes, iaid: int, now: float) -> bool:
        lease = self.by_ip.get(ip)
        if lease is None or not lease.live(now):
            return True
        return lease.duid == duid and lease.iaid == iaid and lease.state is not S.DECLINED

    def claim(
        self, ip: int, duid: bytes, iaid: int, mac: str | None, node_id: str | None, now: float
    ) -> Lease6:
        """The lease for `ip`, now held by this client (a new row when it was someone else's)."""
        lease = self.by_ip.get(ip)
        if lease is not None and lease.duid == duid and lease.iaid == iaid:
            lease.mac, lease.node_id = mac, node_id
            return lease
        if lease is None and len(self.by_ip) >= self.max_leases:
            self._reclaim(now)
            if len(self.by_ip) >= self.max_leases:
                raise Dhcp6Error("lease_table_full")
        previous = self.by_client.get((duid, iaid))
        if previous is not None and previous.ip != ip and previous.state is S.ADVERTISED:
            # The client moves on from an address it was only offered: give that one back now.
            del self.by_ip[previous.ip]
        # A new holder starts a new row (FREE): the old holder's record is replaced in the store.
        fresh = Lease6(ip, duid, iaid, mac, node_id)
        self._put(fresh)
        return fresh

    def ensure_room(self, rows: int, now: float) -> None:
        """Raise `lease_table_full` unless `rows` new leases fit, before anything is changed: a request
        refused half-way would leave leases bound in memory that no reply or commit speaks of."""
        if len(self.by_ip) + rows > self.max_leases:
            self._reclaim(now)
            if len(self.by_ip) + rows > self.max_leases:
                raise Dhcp6Error("lease_table_full")

    def _reclaim(self, now: float) -> None:
        dead = [ip for ip, lease in self.by_ip.items() if not lease.live(now)]
        for ip in dead:
            lease = self.by_ip.pop(ip)
            if self.by_client.get((lease.duid, lease.iaid)) is lease:
                del self.by_client[(lease.duid, lease.iaid)]

    def apply(self, lease: Lease6, event: Lease6Event, now: float, duration: float) -> bool:
        """Move `lease` through TRANSITIONS; returns whether the change must be committed."""
        state = lease.state
        if state in (S.ADVERTISED, S.BOUND, S.DECLINED) and lease.expires <= now and event is not E.EXPIRE:
            state = S.FREE if state is S.ADVERTISED else S.EXPIRED
        step = TRANSITIONS.get((state, event))
        if step is None:
            raise Lease6TransitionError(state, event)
        lease.state, durable = step
        if event is not E.ADVERTISE or lease.state is not S.BOUND:
            lease.expires = now + duration
        return durable

    def sweep(self, now: float) -> Iterator[tuple[Lease6, bool]]:
        for lease in list(self.by_ip.values()):
            if lease.state in (S.ADVERTISED, S.BOUND, S.DECLINED) and lease.expires <= now:
                yield lease, self.apply(lease, E.EXPIRE, now, 0.0)
