"""Protocol fuzzing (issue #11 guarantees): mutations of real client packets through the DHCP and
TFTP sans-IO cores; no exception escapes and every datagram a core does not act on is counted.
bench/fuzz_netboot.py runs the same mutators over a million packets."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st
from netboot_fuzz import (
    DHCP_OPS,
    DHCP_OPTIONS_AT,
    TFTP_OPS,
    DhcpFuzzer,
    Op,
    TftpFuzzer,
    dhcp_seeds,
    mutate,
    random_ops,
    tftp_seeds,
)

DHCP_SEEDS = dhcp_seeds()
TFTP_SEEDS = tftp_seeds()
TFTP_REQUESTS = [seed for seed in TFTP_SEEDS if seed[1][1] in (1, 2)]


def ops(kinds: tuple[str, ...]) -> st.SearchStrategy[list[Op]]:
    op = st.tuples(st.sampled_from(kinds), st.integers(0, 2**16), st.integers(0, 300), st.binary(max_size=8))
    return st.lists(op, min_size=1, max_size=5)


def test_the_seeds_are_what_real_clients_get_answers_for() -> None:
    """Unmutated, the seeds take the cores' main paths (a seed that is dropped tests little)."""
    fuzzer = DhcpFuzzer()
    for _, datagram, port in DHCP_SEEDS:
        fuzzer.feed(datagram, port)
    assert fuzzer.answered > len(DHCP_SEEDS)  # most seeds are answered by the full or proxy core
    tftp = TftpFuzzer()
    for _, datagram in TFTP_REQUESTS:
        tftp.session(datagram, [("ack", b"")] * 20)
    assert tftp.outcomes["completed"] >= 5 and tftp.outcomes["denied"] == 1  # the WRQ


@settings(max_examples=1000, deadline=None)
@given(seed=st.sampled_from(DHCP_SEEDS), mutation=ops(DHCP_OPS), then=st.sampled_from(DHCP_SEEDS))
def test_mutated_dhcp_exchanges_never_raise_and_every_drop_is_counted(
    seed: tuple[str, bytes, int], mutation: list[Op], then: tuple[str, bytes, int]
) -> None:
    fuzzer = DhcpFuzzer()
    _, datagram, port = seed
    fuzzer.feed(mutate(datagram, mutation), port)
    fuzzer.feed(mutate(datagram, mutation), 4011 if port == 67 else 67)
    fuzzer.feed(then[1], then[2])  # a real client right after: the cores still answer
    assert fuzzer.packets == fuzzer.answered + fuzzer.dropped == 6
    assert sum(fuzzer.drops().values()) == fuzzer.dropped


@settings(max_examples=1000, deadline=None)
@given(
    request=st.sampled_from(TFTP_SEEDS),
    mutation=st.none() | ops(TFTP_OPS),
    steps=st.lists(
        st.tuples(st.sampled_from(["ack", "timer", "send"]), st.sampled_from(TFTP_SEEDS), ops(TFTP_OPS)),
        max_size=12,
    ),
)
def test_mutated_tftp_sessions_never_raise_and_every_drop_is_counted(
    request: tuple[str, bytes],
    mutation: list[Op] | None,
    steps: list[tuple[str, tuple[str, bytes], list[Op]]],
) -> None:
    fuzzer = TftpFuzzer()
    datagram = request[1] if mutation is None else mutate(request[1], mutation)
    fuzzer.session(datagram, [(kind, mutate(seed[1], m)) for kind, seed, m in steps])
    assert fuzzer.packets >= 1
    assert fuzzer.malformed + fuzzer.unexpected + fuzzer.transfers == 1
    # Every data-phase datagram either moved the transfer or was counted as dropped or stale.
    assert fuzzer.packets - 1 == fuzzer.acted + fuzzer.dropped + fuzzer.stale_acks
    assert sum(fuzzer.outcomes.values()) == fuzzer.transfers


def test_a_seeded_mutation_run_keeps_the_invariants() -> None:
    """A few thousand packets the way the bench draws them (one long-lived core, a moving clock)."""
    rng = random.Random(11)
    fuzzer = DhcpFuzzer()
    tftp = TftpFuzzer()
    for _ in range(2000):
        _, datagram, port = rng.choice(DHCP_SEEDS)
        fuzzer.feed(
            mutate(datagram, random_ops(rng, DHCP_OPS, len(datagram), focus=DHCP_OPTIONS_AT))
            if rng.random() < 0.9
            else datagram,
            port,
        )
        _, request = rng.choice(TFTP_SEEDS)
        seed = rng.choice(TFTP_SEEDS)[1]
        steps = [
            (
                "ack" if rng.random() < 0.6 else "send",
                mutate(seed, random_ops(rng, TFTP_OPS, len(seed))),
            )
            for _ in range(rng.randrange(6))
        ]
        tftp.session(
            mutate(request, random_ops(rng, TFTP_OPS, len(request))) if rng.random() < 0.7 else request, steps
        )
    assert fuzzer.packets == fuzzer.answered + fuzzer.dropped == 4000
    assert fuzzer.answered > 100 and fuzzer.dropped > 100
    assert (
        tftp.packets
        == tftp.malformed + tftp.unexpected + tftp.transfers + tftp.acted + tftp.dropped + tftp.stale_acks
    )
    assert tftp.outcomes["completed"] > 10
