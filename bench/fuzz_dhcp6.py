"""Protocol fuzzing of the DHCPv6 sans-IO core (issue #12, IPv6): mutated real client messages through
one long-lived full-mode core and one proxy-style core.

    .venv/bin/python bench/fuzz_dhcp6.py                          # 1,000,000 messages
    .venv/bin/python bench/fuzz_dhcp6.py --packets 100000 --seed 7

The seeds, mutators and invariants are tests/unit/netboot/dhcp6_fuzz.py's (the hypothesis tests use
the same): nothing raises, every datagram a core does not act on is one counted drop, every reply
parses as a server message. Each of --packets messages goes to both cores. Bounded in count and in
time (--seconds). Printed: exceptions and invariant violations (both must be 0), drops and option
drops by reason, rate, and RSS at checkpoints (a long run must not keep growing: the lease table is
bounded).
"""

from __future__ import annotations

import argparse
import random
import resource
import sys
import time
import traceback
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests" / "unit" / "netboot"))

from dhcp6_fuzz import SEEDS, Dhcp6Fuzzer, mutate6, random_ops6  # noqa: E402 (found through the path above)


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--packets", type=int, default=1_000_000)
    parser.add_argument("--seconds", type=float, default=900.0)
    parser.add_argument("--seed", type=int, default=int(time.time()) % 100_000)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    fuzzer = Dhcp6Fuzzer()
    raised: Counter[str] = Counter()
    violations: Counter[str] = Counter()
    first: dict[str, str] = {}
    print(f"seed {args.seed}; RSS at start: {rss_mib():.1f} MiB")
    start = time.monotonic()
    done = 0
    while done < args.packets and time.monotonic() - start < args.seconds:
        _, sample = rng.choice(SEEDS)
        datagram = sample if rng.random() < 0.05 else mutate6(sample, random_ops6(rng, len(sample)))
        try:
            fuzzer.feed(datagram)
        except AssertionError:
            violations["invariant"] += 1
            first.setdefault("invariant", f"{datagram!r}\n{traceback.format_exc()}")
        except Exception as exc:
            raised[type(exc).__name__] += 1
            first.setdefault(type(exc).__name__, f"{datagram!r}\n{traceback.format_exc()}")
        done += 1
        if done % 200_000 == 0:
            print(f"  {done:,} messages, RSS {rss_mib():.1f} MiB")
    elapsed = time.monotonic() - start
    print(f"{done:,} messages ({fuzzer.packets:,} datagrams to a core) in {elapsed:.0f} s, "
          f"{fuzzer.packets / elapsed:,.0f}/s; answered {fuzzer.answered:,}, dropped {fuzzer.dropped:,}; "
          f"counted drops {sum(fuzzer.drops().values()):,}")  # fmt: skip
    print("drops by reason: " + ", ".join(f"{k} {v:,}" for k, v in fuzzer.drops().most_common()))
    print(
        "option drops by reason: " + ", ".join(f"{k} {v:,}" for k, v in fuzzer.option_drops().most_common())
    )
    print(f"RSS at end: {rss_mib():.1f} MiB")
    print(
        f"exceptions: {sum(raised.values())} (must be 0); "
        f"invariant violations: {sum(violations.values())} (must be 0)"
    )
    for key, text in first.items():
        print(f"  first {key}: {text[:800]}")
    if sum(fuzzer.drops().values()) != fuzzer.dropped:
        print("uncounted drops!")
        sys.exit(1)
    sys.exit(1 if raised or violations else 0)


if __name__ == "__main__":
    main()
