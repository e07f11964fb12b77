"""Protocol fuzzing of the netboot services (issue #11): mutated real client packets through the
DHCP and TFTP sans-IO cores, then through the running servers.

    .venv/bin/python bench/fuzz_netboot.py                      # 1,000,000 core packets, then servers
    .venv/bin/python bench/fuzz_netboot.py --packets 100000 --server-packets 20000 --seed 7

Part 1 feeds --packets datagrams (half DHCP, half TFTP) to one long-lived full-mode DHCP core, one
proxy core and a stream of TFTP transfers, with the mutators and invariants of
tests/unit/netboot/netboot_fuzz.py (the hypothesis tests use the same ones): nothing raises, and
every datagram a core does not act on is counted. Part 2 sends --server-packets mutated datagrams to
a TftpServer on 127.0.0.1 (from 64 loopback addresses, answering the transfers it starts) and to a
DhcpServer on the loopback interface of a network namespace this script creates and deletes
(skipped without root). Both parts are bounded in count and in time (--seconds each).

Printed: exceptions (must be 0: raised out of a core, or logged by a server), invariant violations
(must be 0), drops by reason, and RSS at checkpoints (memory flat: a long run must not keep
growing). RSS is read after glibc's malloc_trim, so it shows what the process holds rather than
free heap pages the allocator kept after a busy moment; with the native TFTP data plane it also
holds glibc's cache of exited threads' stacks (up to 40 MiB), which the first busy seconds fill.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import logging
import os
import random
import socket
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests" / "unit" / "netboot"))

from netboot_fuzz import (  # noqa: E402 (found through the path above)
    DHCP_OPS,
    DHCP_OPTIONS_AT,
    TFTP_FILES,
    TFTP_OPS,
    DhcpFuzzer,
    Step,
    TftpFuzzer,
    dhcp_seeds,
    mutate,
    random_ops,
    tftp_seeds,
)

from bootforge.netboot import dhcp, tftp  # noqa: E402
from bootforge.servers.dhcp import DhcpServer  # noqa: E402
from bootforge.servers.tftp import DataPlaneChoice, TftpServer  # noqa: E402


def _malloc_trim() -> Callable[[], object]:
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc
        return lambda: None


_TRIM = _malloc_trim()


def rss_mib() -> float:
    """Resident memory after handing the heap's free pages back (glibc malloc_trim): what is
    left is what the process holds, not what the allocator kept around after a busy moment."""
    _TRIM(0)  # type: ignore[call-arg]
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


class Errors:
    """Exceptions out of a core, invariant violations, and anything a server logs with a traceback
    or at ERROR; the first of each kind is kept to print."""

    def __init__(self) -> None:
        self.raised: Counter[str] = Counter()
        self.violations: Counter[str] = Counter()
        self.logged: Counter[str] = Counter()
        self.first: dict[str, str] = {}

    def record(self, where: Counter[str], key: str, text: str) -> None:
        where[key] += 1
        self.first.setdefault(key, text)

    @contextlib.contextmanager
    def guard(self, what: str, sample: bytes) -> Iterator[None]:
        try:
            yield
        except AssertionError:
            self.record(self.violations, f"{what}: invariant", f"{sample!r}\n{traceback.format_exc()}")
        except Exception as exc:
            self.record(self.raised, f"{what}: {type(exc).__name__}", f"{sample!r}\n{traceback.format_exc()}")

    def handler(self) -> logging.Handler:
        errors = self

        class Counting(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                if record.exc_info or record.levelno >= logging.ERROR:
                    errors.record(
                        errors.logged, f"{record.name}: {record.getMessage()[:60]}", self.format(record)
                    )

        return Counting(logging.DEBUG)

    def total(self) -> int:
        return sum(self.raised.values()) + sum(self.violations.values()) + sum(self.logged.values())

    def report(self) -> None:
        print(f"  exceptions: {sum(self.raised.values()) + sum(self.logged.values())} (must be 0)")
        print(f"  invariant violations: {sum(self.violations.values())} (must be 0)")
        for key, count in [*self.raised.items(), *self.violations.items(), *self.logged.items()]:
            print(f"    {count} x {key}\n      first: {self.first[key][:800]}")


# -- part 1: the cores ----------------------------------------------------------------------------


def fuzz_cores(packets: int, seconds: float, seed: int, errors: Errors) -> None:
    rng = random.Random(seed)
    dhcp_corpus, tftp_corpus = dhcp_seeds(), tftp_seeds()
    requests = [s for s in tftp_corpus if s[1][1] in (1, 2)]
    dhcp_fuzzer, tftp_fuzzer = DhcpFuzzer(), TftpFuzzer()
    rss = [("start", rss_mib())]
    started = time.monotonic()
    checkpoint = max(1, packets // 10)
    next_checkpoint = checkpoint
    while True:
        done = dhcp_fuzzer.packets + tftp_fuzzer.packets
        if done >= packets or time.monotonic() - started > seconds:
            break
        if done >= next_checkpoint:
            rss.append((f"{done:,}", rss_mib()))
            next_checkpoint += checkpoint
        if dhcp_fuzzer.packets <= tftp_fuzzer.packets:
            _, datagram, port = rng.choice(dhcp_corpus)
            if rng.random() < 0.95:
                ops = random_ops(rng, DHCP_OPS, len(datagram), focus=DHCP_OPTIONS_AT)
                datagram = mutate(datagram, ops)
            with errors.guard("dhcp core", datagram):
                dhcp_fuzzer.feed(datagram, port if rng.random() < 0.9 else 4011)
            continue
        _, request = rng.choice(requests if rng.random() < 0.8 else tftp_corpus)
        if rng.random() < 0.7:
            request = mutate(request, random_ops(rng, TFTP_OPS, len(request)))
        steps: list[Step] = []
        for _ in range(rng.randrange(12)):
            roll = rng.random()
            if roll < 0.55:
                steps.append(("ack", b""))
            elif roll < 0.6:
                steps.append(("timer", b""))
            else:
                _, sample = rng.choice(tftp_corpus)
                steps.append(("send", mutate(sample, random_ops(rng, TFTP_OPS, len(sample)))))
        with errors.guard("tftp core", request):
            tftp_fuzzer.session(request, steps)
    elapsed = time.monotonic() - started
    rss.append(("end", rss_mib()))
    total = dhcp_fuzzer.packets + tftp_fuzzer.packets
    print(f"\n== sans-IO cores: {total:,} packets in {elapsed:.1f} s ({total / elapsed:,.0f}/s), seed {seed}")
    print(
        f"  dhcp: {dhcp_fuzzer.packets:,} datagrams to a core, {dhcp_fuzzer.answered:,} acted on, "
        f"{dhcp_fuzzer.dropped:,} dropped; counted drops {sum(dhcp_fuzzer.drops().values()):,}"
    )
    print("  dhcp drops by reason: " + ", ".join(f"{k} {v:,}" for k, v in dhcp_fuzzer.drops().most_common()))
    t = tftp_fuzzer
    print(
        f"  tftp: {t.packets:,} datagrams, {t.transfers:,} transfers, "
        f"{t.acted:,} data-phase datagrams acted on"
    )
    print("  tftp drops by reason: " + ", ".join(f"{k} {v:,}" for k, v in t.drops().most_common()))
    print("  tftp transfer outcomes: " + ", ".join(f"{k} {v:,}" for k, v in t.outcomes.most_common()))
    print("  RSS MiB: " + ", ".join(f"{label} {value:.1f}" for label, value in rss))


# -- part 2: the running servers ------------------------------------------------------------------


async def fuzz_tftp_server(
    packets: int, seconds: float, seed: int, errors: Errors, dataplane: DataPlaneChoice
) -> None:
    rng = random.Random(seed + 1)
    corpus = tftp_seeds()
    requests = [s[1] for s in corpus if s[1][1] in (1, 2)]
    loop = asyncio.get_running_loop()
    with tempfile.TemporaryDirectory(prefix="bf-fuzz-") as root:
        for name, data in TFTP_FILES.items():
            path = Path(root) / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        config = tftp.TransferConfig(timeout=0.2, max_retries=2)
        server = TftpServer(
            tftp.FileSystemSource(root), "127.0.0.1", port=0, config=config, dataplane=dataplane
        )
        clients: list[socket.socket] = []
        try:
            await server.start()
            for i in range(64):
                sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                sock.setblocking(False)
                try:
                    sock.bind((f"127.0.0.{2 + i}", 0))
                except OSError:
                    sock.bind(("127.0.0.1", 0))
                clients.append(sock)
            rss, sent_requests, sent_data = [("before", rss_mib())], 0, 0
            checkpoint = max(1, packets // 5)
            started = time.monotonic()
            while sent_requests + sent_data < packets and time.monotonic() - started < seconds:
                if sent_requests + sent_data >= checkpoint * len(rss):
                    rss.append((f"{sent_requests + sent_data:,}", rss_mib()))
                for sock in clients:
                    # Answer what came back: a good ACK or a mutation of one, to the transfer's TID.
                    for _ in range(8):
                        try:
                            reply, tid = sock.recvfrom(70000)
                        except BlockingIOError:
                            break
                        if reply[:2] in (b"\0\x03", b"\0\x06"):
                            block = reply[2:4] if reply[:2] == b"\0\x03" else b"\0\0"
                            answer = b"\0\x04" + block
                            if rng.random() < 0.3:
                                answer = mutate(rng.choice(corpus)[1], random_ops(rng, TFTP_OPS, 8))
                            sock.sendto(answer, tid)
                            sent_data += 1
                    request = rng.choice(requests)
                    if rng.random() < 0.8:
                        request = mutate(request, random_ops(rng, TFTP_OPS, len(request)))
                    with contextlib.suppress(OSError):
                        sock.sendto(request, server.local_address)
                        sent_requests += 1
                await asyncio.sleep(0.002)  # paced: losses in the kernel would hide drops from the count
            # The transfers the last requests started end by themselves within their timeouts.
            deadline = loop.time() + 5
            while server.active_transfers and loop.time() < deadline:  # noqa: ASYNC110 (polls a count)
                await asyncio.sleep(0.05)
            rss.append(("after", rss_mib()))
        finally:
            await server.aclose()
            for sock in clients:
                sock.close()
    c = server.counters
    handled = c.requests + c.malformed + c.unexpected + c.duplicate_requests + c.overloaded + c.client_limited
    print(
        f"\n== TftpServer on 127.0.0.1 ({server.dataplane} data plane): {sent_requests:,} datagrams to the "
        f"request port, {sent_data:,} to transfer ports, in {time.monotonic() - started:.1f} s"
    )
    print(
        f"  request port: {handled:,} accounted for (requests {c.requests:,}, malformed {c.malformed:,}, "
        f"unexpected {c.unexpected:,}, duplicates {c.duplicate_requests:,}, overloaded {c.overloaded:,}, "
        f"client_limited {c.client_limited:,}); not accounted: {sent_requests - handled:,} "
        "(lost in the kernel before the server read them)"
    )
    print(
        f"  transfers: completed {c.completed:,}, size probes {c.size_probes:,}, failed {c.failed:,}; "
        f"transfer-port drops: dropped {c.dropped:,}, stale_acks {c.stale_acks:,}, "
        f"foreign_tid {c.foreign_tid:,}; "
        f"send_errors {c.send_errors}, socket_errors {c.socket_errors}, event_errors {c.event_errors}"
    )
    print("  RSS MiB: " + ", ".join(f"{label} {value:.1f}" for label, value in rss))


def _in_namespace() -> tuple[Any, Any] | None:
    try:
        from bootforge.lab.netns import Namespace, SocketFactory, unique_prefix
    except ImportError as exc:
        print(f"\n== DhcpServer: skipped ({exc})")
        return None
    if os.geteuid() != 0:
        print("\n== DhcpServer: skipped (needs root for a network namespace)")
        return None
    ns = Namespace(unique_prefix("bffz")).create()
    try:
        return ns, SocketFactory(ns.name)
    except BaseException:
        ns.delete()
        raise


async def fuzz_dhcp_server(packets: int, seconds: float, seed: int, errors: Errors) -> None:
    made = _in_namespace()
    if made is None:
        return
    ns, factory = made
    rng = random.Random(seed + 2)
    corpus = dhcp_seeds()
    udp: Callable[[], socket.socket] = lambda: factory.socket(socket.AF_INET, socket.SOCK_DGRAM)  # noqa: E731
    lo = dhcp.Subnet(
        IPv4Network("127.0.0.0/8"), (dhcp.Pool(IPv4Address("127.1.0.100"), IPv4Address("127.1.0.199")),)
    )
    config = dhcp.DhcpConfig(dhcp.Mode.FULL, ("lo",), (lo,), unknown_clients=dhcp.UnknownClients.DISCOVER)
    boot = dhcp.StaticBootSource(
        IPv4Address("127.0.0.1"), "http://127.0.0.1:8080/boot", "http://127.0.0.1:8080/ipxe/{mac}"
    )
    reservations = dhcp.StaticReservations({"52:54:00:12:34:56": dhcp.Reservation("node-1")})
    server = DhcpServer(config, boot, reservations, dhcp.InMemoryLeaseStore(), socket_factory=udp)
    client = udp()
    handled = Counter[str]()
    try:
        await server.start()
        assert server.core is not None
        core, receive = server.core, server.core.receive

        def counting(datagram: bytes, *args: Any, **kw: Any) -> dhcp.Outcome:
            outcome = receive(datagram, *args, **kw)
            handled["dropped" if outcome.dropped else "acted"] += 1
            return outcome

        core.receive = counting  # type: ignore[method-assign]
        client.setblocking(False)
        client.bind(("127.0.0.1", 0))
        rss_before, sent = rss_mib(), 0
        started = time.monotonic()
        while sent < packets and time.monotonic() - started < seconds:
            for _ in range(64):
                _, datagram, _port = rng.choice(corpus)
                if rng.random() < 0.95:
                    datagram = mutate(
                        datagram, random_ops(rng, DHCP_OPS, len(datagram), focus=DHCP_OPTIONS_AT)
                    )
                with contextlib.suppress(OSError):
                    client.sendto(datagram, ("127.0.0.1", 67))
                    sent += 1
                with contextlib.suppress(OSError):
                    while client.recv(4096):
                        pass
            await asyncio.sleep(0.002)
        for _ in range(100):  # let the server read what is queued
            if sum(handled.values()) >= sent:
                break
            await asyncio.sleep(0.02)
        rss_after = rss_mib()
    finally:
        await server.close()
        client.close()
        factory.close()
        ns.delete()
    drops = server.drops
    total = sum(handled.values())
    print(
        f"\n== DhcpServer on lo in namespace {ns.name} (deleted): {sent:,} datagrams in "
        f"{time.monotonic() - started:.1f} s; the server read {total:,} (with its own replies to relay "
        "addresses on lo that a mutation made local)"
    )
    print(
        f"  acted on {handled['acted']:,}, dropped {handled['dropped']:,}; counted core drops "
        f"{sum(core.drops.values()):,} (must equal dropped)"
    )
    print("  drops by reason: " + ", ".join(f"{k} {v:,}" for k, v in drops.most_common()))
    if sum(core.drops.values()) != handled["dropped"]:
        errors.record(errors.violations, "dhcp server: uncounted drops", "")
    print(f"  RSS MiB: before {rss_before:.1f}, after {rss_after:.1f}")


async def fuzz_servers(
    packets: int, seconds: float, seed: int, errors: Errors, dataplane: DataPlaneChoice
) -> None:
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(
        lambda _loop, context: errors.record(errors.logged, "event loop", str(context.get("message")))
    )
    await fuzz_tftp_server(packets // 2, seconds / 2, seed, errors, dataplane)
    await fuzz_dhcp_server(packets // 2, seconds / 2, seed, errors)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--packets", type=int, default=1_000_000, help="datagrams through the cores")
    parser.add_argument("--seconds", type=float, default=900.0, help="time bound of each part")
    parser.add_argument("--server-packets", type=int, default=100_000, help="datagrams to the servers")
    parser.add_argument("--seed", type=int, default=int(time.time()) % 100_000)
    parser.add_argument("--dataplane", choices=["auto", "native", "python"], default="auto")
    args = parser.parse_args()
    errors = Errors()
    handler = errors.handler()
    logging.getLogger("bootforge").addHandler(handler)
    logging.getLogger("bootforge").setLevel(logging.INFO)
    logging.getLogger("bootforge").propagate = False  # the per-packet warnings would flood the terminal
    print(f"RSS at start: {rss_mib():.1f} MiB")
    fuzz_cores(args.packets, args.seconds, args.seed, errors)
    asyncio.run(fuzz_servers(args.server_packets, args.seconds, args.seed, errors, args.dataplane))
    print("\n== result")
    errors.report()
    sys.exit(1 if errors.total() else 0)


if __name__ == "__main__":
    main()
