"""Which live conductor owns a node: a consistent hash ring per conductor group and hardware type.

Each conductor is placed on a ring at REPLICAS points (a keyed hash of its name and the point's
number); a node belongs to the first conductor point at or after the hash of its UUID. When a
conductor joins or leaves, only the nodes between its points and their neighbours change hands
(about 1/n of them), so a death moves the dead conductor's nodes and nothing else.

As in Ironic, a node is only ever owned by a conductor of its own `conductor_group` ('' is the default
group) that has the node's hardware type enabled: one ring per (group, hardware type), over the
conductors the database calls alive (db/clock.py). A node whose group has no live conductor with its
type has no owner, and nothing acts on it until one comes.

The hash is BLAKE2b, not Python's hash(): every process, on every host, must draw the same ring.
Pure code: no database, no clock.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

# Points per conductor. More points even out the share each conductor gets (the spread falls
# roughly as 1/sqrt(REPLICAS)); at 256 the largest share among 2-64 conductors stays within 1.5x
# the mean (tests/unit/conductor/test_ring.py), and a ring of 64 conductors is 16,384 points.
REPLICAS = 256


def _point(data: str) -> int:
    return int.from_bytes(hashlib.blake2b(data.encode(), digest_size=8).digest(), "big")


class HashRing:
    """A consistent hash ring over `members` (names); owner(key) is deterministic everywhere."""

    def __init__(self, members: Iterable[str], replicas: int = REPLICAS) -> None:
        self.members = frozenset(members)
        # Ties between two members' points (64-bit hashes: practically never) go by name, so they
        # too are decided the same way in every process.
        placed = sorted((_point(f"{m}\x00{i}"), m) for m in self.members for i in range(replicas))
        self._points = [p for p, _ in placed]
        self._owners = [m for _, m in placed]

    def owner(self, key: str) -> str | None:
        """The member that owns `key`, or None on an empty ring."""
        if not self._points:
            return None
        i = bisect.bisect_left(self._points, _point(key))
        return self._owners[i % len(self._owners)]

    def shares(self) -> dict[str, float]:
        """The fraction of the hash space each member owns (sums to 1): the ring's balance, exactly."""
        out = dict.fromkeys(self.members, 0.0)
        previous = self._points[-1] - (1 << 64) if self._points else 0
        for point, member in zip(self._points, self._owners, strict=True):
            # A point owns the arc from the point before it (exclusive) up to itself.
            out[member] += (point - previous) / (1 << 64)
            previous = point
        return out


@dataclass(frozen=True)
class Member:
    """A live conductor as the ring sees it."""

    hostname: str
    group: str
    hardware_types: frozenset[str]


class Rings:
    """The rings of one moment's live conductors, one per (conductor group, hardware type)."""

    def __init__(self, members: Iterable[Member]) -> None:
        self.members = tuple(sorted(set(members), key=lambda m: m.hostname))
        self._rings: dict[tuple[str, str], HashRing] = {}

    def owner(self, node_uuid: str, group: str | None, hardware_type: str) -> str | None:
        """The conductor that owns a node, or None if no live conductor of its group drives its type."""
        key = (group or "", hardware_type)
        ring = self._rings.get(key)
        if ring is None:
            ring = HashRing(
                m.hostname for m in self.members if m.group == key[0] and hardware_type in m.hardware_types
            )
            self._rings[key] = ring
        return ring.owner(node_uuid)

    def hostnames(self) -> frozenset[str]:
        return frozenset(m.hostname for m in self.members)
