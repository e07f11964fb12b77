"""The lease state machine table and the in-memory lease table."""

from __future__ import annotations

from ipaddress import IPv4Address

import pytest

from bootforge.netboot.dhcp import (
    TRANSITIONS,
    InMemoryLeaseStore,
    LeaseEvent,
    LeaseRecord,
    LeaseState,
    LeaseTransitionError,
)
from bootforge.netboot.dhcp._leases import Lease, LeaseTable

S, E = LeaseState, LeaseEvent
IP = int(IPv4Address("10.0.0.10"))


@pytest.mark.parametrize(
    ("state", "event", "expected", "durable"),
    [
        pytest.param(S.FREE, E.OFFER, S.OFFERED, False, id="offer-is-not-durable"),
        pytest.param(S.OFFERED, E.ACK, S.BOUND, True, id="ack-is-durable"),
        pytest.param(S.BOUND, E.ACK, S.BOUND, True, id="renew"),
        pytest.param(S.BOUND, E.OFFER, S.BOUND, False, id="rediscover-keeps-binding"),
        pytest.param(S.BOUND, E.RELEASE, S.RELEASED, True, id="release"),
        pytest.param(S.BOUND, E.DECLINE, S.DECLINED, True, id="decline"),
        pytest.param(S.OFFERED, E.EXPIRE, S.FREE, False, id="offer-lapses"),
        pytest.param(S.BOUND, E.EXPIRE, S.EXPIRED, True, id="lease-expires"),
        pytest.param(S.DECLINED, E.EXPIRE, S.FREE, True, id="quarantine-ends"),
    ],
)
def test_transitions(state: LeaseState, event: LeaseEvent, expected: LeaseState, durable: bool) -> None:
    assert TRANSITIONS[(state, event)] == (expected, durable)


@pytest.mark.parametrize(
    ("state", "event"),
    [(S.FREE, E.RELEASE), (S.DECLINED, E.ACK), (S.RELEASED, E.DECLINE), (S.FREE, E.EXPIRE)],
)
def test_missing_transitions_raise(state: LeaseState, event: LeaseEvent) -> None:
    table = LeaseTable()
    lease = Lease(IP, "m", state, expires=1e9)
    with pytest.raises(LeaseTransitionError):
        table.apply(lease, event, now=0.0, hold=10.0)


def test_every_transition_target_is_a_state_with_an_exit() -> None:
    sources = {state for state, _ in TRANSITIONS}
    assert {target for target, _ in TRANSITIONS.values()} <= sources


def test_offer_reserves_until_hold_then_address_is_free_for_others() -> None:
    table = LeaseTable()
    lease = table.claim(IP, "a", None, now=0.0)
    assert not table.apply(lease, E.OFFER, now=0.0, hold=30.0)
    assert table.available(IP, "a", now=10.0)
    assert not table.available(IP, "b", now=10.0)
    assert table.available(IP, "b", now=30.0)
    taken = table.claim(IP, "b", None, now=31.0)
    assert taken.mac == "b" and "a" not in table.by_mac


def test_lapsed_offer_can_still_be_acked() -> None:
    table = LeaseTable()
    lease = table.claim(IP, "a", None, now=0.0)
    table.apply(lease, E.OFFER, now=0.0, hold=30.0)
    assert table.apply(lease, E.ACK, now=100.0, hold=3600.0)
    assert lease.state is S.BOUND and lease.expires == 3700.0


def test_declined_address_is_quarantined_and_leaves_the_client() -> None:
    table = LeaseTable()
    lease = table.claim(IP, "a", None, now=0.0)
    table.apply(lease, E.OFFER, now=0.0, hold=30.0)
    table.apply(lease, E.DECLINE, now=1.0, hold=600.0)
    assert "a" not in table.by_mac and lease.mac == ""
    assert not table.available(IP, "a", now=100.0)
    assert table.available(IP, "a", now=601.0)


def test_find_free_round_robin_and_exhaustion() -> None:
    table = LeaseTable()
    first, last = IP, IP + 2
    got = []
    for mac in "abc":
        ip = table.find_free(first, last, mac, now=0.0)
        assert ip is not None
        table.apply(table.claim(ip, mac, None, 0.0), E.OFFER, 0.0, 30.0)
        got.append(ip)
    assert got == [IP, IP + 1, IP + 2]
    assert table.find_free(first, last, "d", now=0.0) is None
    assert table.find_free(first, last, "d", now=31.0) == IP


def test_sweep_reports_expiries_with_durability() -> None:
    table = LeaseTable()
    offered = table.claim(IP, "a", None, 0.0)
    table.apply(offered, E.OFFER, 0.0, 30.0)
    bound = table.claim(IP + 1, "b", "node-b", 0.0)
    table.apply(bound, E.ACK, 0.0, 60.0)
    assert table.sweep(10.0) == []
    changed = table.sweep(61.0)
    assert [(lease.mac, lease.state, durable) for lease, durable in changed] == [
        ("a", S.FREE, False),
        ("b", S.EXPIRED, True),
    ]


def test_table_restores_from_records() -> None:
    record = LeaseRecord(IPv4Address(IP), "a", S.BOUND, 500.0, "node-a")
    table = LeaseTable([record])
    assert table.by_mac["a"].record() == record
    assert not table.available(IP, "b", now=100.0)


async def test_in_memory_store_counts_batches() -> None:
    store = InMemoryLeaseStore()
    records = [LeaseRecord(IPv4Address(IP + i), f"m{i}", S.BOUND, 9.0) for i in range(3)]
    await store.commit(records)
    await store.commit(records[:1])
    assert store.batches == [3, 1]
    assert len(await store.load()) == 3
