"""The DHCPv6 lease table: states move only along TRANSITIONS, durability as the table says,
expiry is lazy plus sweep, and the table is bounded."""

from __future__ import annotations

import pytest

from bootforge.netboot import dhcp6
from bootforge.netboot.dhcp6._leases import Lease6Table

E, S = dhcp6.Lease6Event, dhcp6.Lease6State
DUID = b"\x00\x03\x00\x01" + bytes(6)


def test_advertise_is_not_durable_bind_is() -> None:
    table = Lease6Table()
    lease = table.claim(1, DUID, 1, None, None, 0.0)
    assert table.apply(lease, E.ADVERTISE, 0.0, 60.0) is False and lease.state is S.ADVERTISED
    assert table.apply(lease, E.BIND, 1.0, 7200.0) is True and lease.state is S.BOUND
    assert lease.expires == 7201.0
    # A SOLICIT while bound keeps the lease's own lifetime.
    table.apply(lease, E.ADVERTISE, 2.0, 60.0)
    assert lease.state is S.BOUND and lease.expires == 7201.0


def test_transitions_not_in_the_table_raise() -> None:
    table = Lease6Table()
    lease = table.claim(1, DUID, 1, None, None, 0.0)
    with pytest.raises(dhcp6.Lease6TransitionError):
        table.apply(lease, E.RELEASE, 0.0, 0.0)  # nothing to release
    table.apply(lease, E.BIND, 0.0, 100.0)
    table.apply(lease, E.DECLINE, 1.0, 100.0)
    with pytest.raises(dhcp6.Lease6TransitionError):
        table.apply(lease, E.BIND, 2.0, 100.0)  # a declined address is not bound again while held


def test_sweep_expires_and_says_what_to_write() -> None:
    table = Lease6Table()
    offered = table.claim(1, DUID, 1, None, None, 0.0)
    table.apply(offered, E.ADVERTISE, 0.0, 10.0)
    bound = table.claim(2, DUID, 2, None, None, 0.0)
    table.apply(bound, E.BIND, 0.0, 20.0)
    assert [(lease.ip, durable) for lease, durable in table.sweep(15.0)] == [(1, False)]
    assert [(lease.ip, durable) for lease, durable in table.sweep(25.0)] == [(2, True)]
    assert bound.state is S.EXPIRED and table.available(2, b"other", 9, 25.0)


def test_the_table_is_bounded_and_reclaims_dead_rows() -> None:
    table = Lease6Table(max_leases=2)
    for ip in (1, 2):
        table.apply(table.claim(ip, DUID, ip, None, None, 0.0), E.ADVERTISE, 0.0, 10.0)
    with pytest.raises(dhcp6.Dhcp6Error, match="lease_table_full"):
        table.ensure_room(1, 5.0)
    table.ensure_room(1, 11.0)  # both advertisements are over: their rows go
    assert table.by_ip == {}


def test_records_survive_a_restart() -> None:
    store = dhcp6.InMemoryLease6Store()
    table = Lease6Table()
    lease = table.claim(5, DUID, 3, "52:54:00:12:34:56", "node-1", 0.0)
    table.apply(lease, E.BIND, 0.0, 100.0)
    store.commit([lease.record()])
    again = Lease6Table(store.load())
    restored = again.binding(DUID, 3)
    assert restored is not None and restored.record() == lease.record()
