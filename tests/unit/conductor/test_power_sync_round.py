"""The one-line summary a power-sync round logs."""

from __future__ import annotations

from bootforge.conductor.conductor import PowerSyncRound


def test_summary_gives_counts_and_read_latency_percentiles() -> None:
    r = PowerSyncRound(nodes=200, failed=10, timed_out=9, changed=20, to_maintenance=1, seconds=8.234)
    r.latencies = [i / 1000 for i in range(1, 191)]  # 1 ms .. 190 ms
    assert r.summary() == (
        "200 nodes in 8.23 s: 190 read (p50 96 ms, p95 181 ms, max 190 ms), 10 failed (9 timed out), "
        "20 changed, 1 to maintenance, 0 out of maintenance"
    )


def test_summary_without_a_good_read() -> None:
    r = PowerSyncRound(nodes=1, failed=1, seconds=0.5)
    assert r.summary().startswith("1 nodes in 0.50 s: 0 read, 1 failed")


def test_summary_names_the_first_failure() -> None:
    r = PowerSyncRound(
        nodes=2, failed=1, seconds=0.5, first_failure="n1: DriverError: BMC at 10.0.0.5 refused"
    )
    assert r.summary().endswith(
        "0 out of maintenance; first failure: n1: DriverError: BMC at 10.0.0.5 refused"
    )
