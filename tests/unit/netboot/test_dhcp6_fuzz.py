"""Mutation fuzzing of real DHCPv6 client messages through the full and proxy cores: no exception
escapes, every datagram not acted on is one counted drop, every option left out is counted.
bench/fuzz_netboot.py --dhcp6 runs the same mutators over a million packets."""

from __future__ import annotations

import random

from dhcp6_fuzz import DHCP6_OPS, SEEDS, Dhcp6Fuzzer, mutate6, random_ops6
from hypothesis import given, settings
from hypothesis import strategies as st
from netboot_fuzz import Op


def ops() -> st.SearchStrategy[list[Op]]:
    op = st.tuples(
        st.sampled_from(DHCP6_OPS), st.integers(0, 2**16), st.integers(0, 300), st.binary(max_size=8)
    )
    return st.lists(op, min_size=1, max_size=5)


def test_the_seeds_are_answered() -> None:
    fuzzer = Dhcp6Fuzzer()
    for _, datagram in SEEDS:
        fuzzer.feed(datagram)
    # The full core answers all but the REQUEST/RENEW/RELEASE/DECLINE for addresses it never gave
    # (they get NoBinding replies, still answers) and the proxy answers the netboot SOLICITs.
    assert fuzzer.answered >= len(SEEDS) + 5, fuzzer.drops()
    assert sum(fuzzer.drops().values()) == fuzzer.dropped


@settings(max_examples=1000, deadline=None)
@given(seed=st.sampled_from(SEEDS), mutation=ops(), then=st.sampled_from(SEEDS))
def test_mutated_messages_never_raise_and_every_drop_is_counted(
    seed: tuple[str, bytes], mutation: list[Op], then: tuple[str, bytes]
) -> None:
    fuzzer = Dhcp6Fuzzer()
    fuzzer.feed(mutate6(seed[1], mutation))
    fuzzer.feed(then[1])  # a real client right after: the cores still answer
    assert fuzzer.packets == fuzzer.answered + fuzzer.dropped == 4
    assert sum(fuzzer.drops().values()) == fuzzer.dropped


def test_a_seeded_mutation_run_keeps_the_invariants() -> None:
    rng = random.Random(6)
    fuzzer = Dhcp6Fuzzer()
    for _ in range(20_000):
        _, sample = rng.choice(SEEDS)
        fuzzer.feed(mutate6(sample, random_ops6(rng, len(sample))))
    assert sum(fuzzer.drops().values()) == fuzzer.dropped
    assert fuzzer.answered > 5_000  # most mutations still reach the handlers
    assert {"truncated_option", "bad_length_option", "duplicate_option"} <= set(fuzzer.option_drops())
