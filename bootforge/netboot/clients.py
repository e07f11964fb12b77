"""Which node a client address belongs to, as DHCP taught it, for tying TFTP and HTTP fetches to nodes.

TFTP carries no MAC, and a raw firmware's HTTP fetch of a loader carries none either: the only link
from such a fetch to a node is the address DHCP saw the node take (bootforge's ACK in full mode; in
proxy mode the client's REQUEST to the site DHCP server or its port-4011 request). Anyone on the
provisioning network can send DHCP packets, so the map is bounded (the least recently taught address
goes first) and each entry expires: a stale entry would put another machine's fetches on a node.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

__all__ = ["ClientAddresses"]


class ClientAddresses:
    """address -> node UUID, at most `limit` entries, each forgotten `ttl` seconds after it was taught."""

    def __init__(
        self, limit: int = 65536, ttl: float = 3600.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if limit < 1 or ttl <= 0:
            raise ValueError("ClientAddresses needs limit >= 1 and ttl > 0")
        self.limit = limit
        self.ttl = ttl
        self._clock = clock
        self._entries: OrderedDict[str, tuple[str, float]] = OrderedDict()

    def __setitem__(self, address: str, node_uuid: str) -> None:
        self._entries.pop(address, None)
        self._entries[address] = (node_uuid, self._clock() + self.ttl)
        while len(self._entries) > self.limit:
            self._entries.popitem(last=False)

    def get(self, address: str) -> str | None:
        entry = self._entries.get(address)
        if entry is None:
            return None
        node_uuid, expires = entry
        if self._clock() >= expires:
            del self._entries[address]
            return None
        return node_uuid

    def forget(self, address: str, node_uuid: str) -> None:
        """The node gave the address up (release, decline, expiry): forget it if it is still the node's."""
        entry = self._entries.get(address)
        if entry is not None and entry[0] == node_uuid:
            del self._entries[address]

    def __len__(self) -> int:
        return len(self._entries)
