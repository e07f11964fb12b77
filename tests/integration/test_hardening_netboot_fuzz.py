"""Protocol fuzzing through the running servers, sized for CI (issue #11 guarantees): mutated real
client packets to a TftpServer and an HttpBootServer on 127.0.0.1 and a DhcpServer in a network
namespace; nothing is logged with a traceback, every datagram on a request port is accounted for by
a counter, and a clean client is served afterwards. bench/fuzz_netboot.py runs the big version.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
import sys
from collections import Counter
from collections.abc import Callable
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest
from support.netns import Lan

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit" / "netboot"))
from netboot_fuzz import (
    DHCP_OPS,
    DHCP_OPTIONS_AT,
    TFTP_FILES,
    TFTP_OPS,
    dhcp_seeds,
    mutate,
    random_ops,
    tftp_seeds,
)

from bootforge.netboot import dhcp, tftp
from bootforge.servers.dhcp import DhcpServer
from bootforge.servers.http_boot import HttpBootServer
from bootforge.servers.tftp import TftpServer

REPLY_TIMEOUT = 10.0


async def until(check: Callable[[], bool], timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        assert loop.time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


def tracebacks(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]


async def test_mutated_tftp_traffic_is_counted_and_the_server_keeps_serving(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    for name, data in TFTP_FILES.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(data)
    rng = random.Random(20261207)
    corpus = [seed for _, seed in tftp_seeds()]
    requests = [seed for seed in corpus if seed[1] in (1, 2)]
    loop = asyncio.get_running_loop()
    config = tftp.TransferConfig(timeout=0.2, max_retries=2)
    clients: list[socket.socket] = []
    caplog.set_level(logging.WARNING, "bootforge")
    async with TftpServer(tftp.FileSystemSource(tmp_path), "127.0.0.1", port=0, config=config) as srv:
        try:
            for _ in range(8):
                sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                sock.setblocking(False)
                sock.bind(("127.0.0.1", 0))
                clients.append(sock)
            sent = 0
            for _ in range(250):  # 2,000 datagrams on the request port, and answers to what comes back
                for sock in clients:
                    with contextlib.suppress(BlockingIOError):
                        for _ in range(4):
                            reply, tid = sock.recvfrom(70000)
                            answer = b"\0\x04" + (reply[2:4] if reply[:2] == b"\0\x03" else b"\0\0")
                            if rng.random() < 0.4:
                                answer = mutate(rng.choice(corpus), random_ops(rng, TFTP_OPS, 8))
                            sock.sendto(answer, tid)
                    request = rng.choice(requests)
                    sock.sendto(mutate(request, random_ops(rng, TFTP_OPS, len(request))), srv.local_address)
                    sent += 1
                await asyncio.sleep(0.001)
            c = srv.counters

            def accounted() -> int:
                return (
                    c.requests
                    + c.malformed
                    + c.unexpected
                    + c.duplicate_requests
                    + c.overloaded
                    + c.client_limited
                )

            await until(lambda: accounted() == sent)
            assert c.malformed > 100 and c.requests > 100
            # Every transfer ended with a counted outcome or still runs (a client's timeout option
            # may ask for up to 255 s between retransmissions).
            ended = c.completed + c.size_probes + c.failed
            assert ended + srv.active_transfers == c.requests
            # A clean client is still served (from an address of its own: 127.0.0.1 may be at its
            # per-client limit of transfers that wait for ACKs).
            probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            clients.append(probe)
            probe.setblocking(False)
            probe.bind(("127.0.0.2", 0))
            await loop.sock_sendto(probe, b"\0\x01grub/grub.cfg\0octet\0", srv.local_address)
            data, _ = await asyncio.wait_for(loop.sock_recvfrom(probe, 70000), REPLY_TIMEOUT)
            assert data == b"\0\x03\0\x01" + TFTP_FILES["grub/grub.cfg"]
        finally:
            for sock in clients:
                sock.close()
    assert tracebacks(caplog) == []


# Requests as iPXE, curl and UEFI HTTP boot send them.
HTTP_SEEDS = [
    b"GET /boot/ipxe?mac=52:54:00:12:34:56&platform=efi HTTP/1.1\r\nConnection: keep-alive\r\n"
    b"User-Agent: iPXE/1.21.1+ (g988d2)\r\nHost: 10.213.0.1:8080\r\n\r\n",
    b"GET /bootx64.efi HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: curl/7.88.1\r\nAccept: */*\r\n"
    b"Range: bytes=100-199\r\n\r\n",
    b"GET /undionly.kpxe HTTP/1.1\r\nHost: 10.213.0.1:8080\r\nAccept: */*\r\nRange: bytes=0-\r\n"
    b'If-Range: "abc"\r\n\r\n',
    b"HEAD /grub/grub.cfg HTTP/1.1\r\nHost: 10.213.0.1\r\nConnection: close\r\n\r\n",
]
HTTP_OPS = ("flip", "set", "interesting", "insert", "delete", "dup", "truncate")


async def test_mutated_http_requests_get_an_answer_without_a_traceback(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    for name, data in TFTP_FILES.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(data)
    rng = random.Random(11)
    statuses: Counter[bytes] = Counter()
    caplog.set_level(logging.WARNING, "bootforge")
    async with HttpBootServer(tmp_path, port=0) as srv:
        for _ in range(400):
            sample = rng.choice(HTTP_SEEDS)
            request = mutate(sample, random_ops(rng, HTTP_OPS, len(sample), most=3))
            reader, writer = await asyncio.open_connection(*srv.local_address)
            writer.write(request)
            writer.write_eof()
            reply = await asyncio.wait_for(reader.read(), REPLY_TIMEOUT)
            writer.close()
            await writer.wait_closed()
            statuses[reply[9:12]] += 1
        assert srv.counters.internal_errors == 0
        assert srv.counters.requests + srv.counters.bad_requests >= 300
    assert tracebacks(caplog) == []
    assert statuses[b"200"] + statuses[b"206"] > 20 and statuses[b"400"] > 20, statuses


@pytest.mark.netns
async def test_mutated_dhcp_traffic_is_counted_and_the_server_keeps_answering(netns_lan: Lan) -> None:
    client = netns_lan.client
    client.ns.ip("addr", "add", "10.213.0.50/24", "dev", client.ifname)
    lan = dhcp.Subnet(
        IPv4Network("10.213.0.0/24"), (dhcp.Pool(IPv4Address("10.213.0.100"), IPv4Address("10.213.0.199")),)
    )
    config = dhcp.DhcpConfig(dhcp.Mode.FULL, ("eth0",), (lan,), unknown_clients=dhcp.UnknownClients.DISCOVER)
    boot = dhcp.StaticBootSource(
        IPv4Address("10.213.0.1"), "http://10.213.0.1:8080", "http://10.213.0.1:8080/ipxe/{mac}"
    )
    server = DhcpServer(
        config, boot, dhcp.StaticReservations({}), dhcp.InMemoryLeaseStore(),
        socket_factory=lambda: netns_lan.server.socket(socket.AF_INET, socket.SOCK_DGRAM),
    )  # fmt: skip
    sock = client.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    sock.bind(("10.213.0.50", 0))
    rng = random.Random(5)
    seeds = dhcp_seeds()
    read = Counter[str]()
    await server.start()
    try:
        assert server.core is not None
        core, receive = server.core, server.core.receive

        def counting(datagram: bytes, *args: object, **kw: object) -> dhcp.Outcome:
            outcome = receive(datagram, *args, **kw)  # type: ignore[arg-type]
            read["dropped" if outcome.dropped else "acted"] += 1
            return outcome

        core.receive = counting  # type: ignore[method-assign]
        for i in range(2000):
            _, datagram, _ = rng.choice(seeds)
            ops = random_ops(rng, DHCP_OPS, len(datagram), focus=DHCP_OPTIONS_AT)
            sock.sendto(mutate(datagram, ops), ("10.213.0.1", 67))
            if i % 50 == 0:
                await asyncio.sleep(0.001)
        await until(lambda: sum(read.values()) >= 2000)
        assert read["dropped"] == sum(core.drops.values()) > 500
        assert read["acted"] > 100
        assert server.shell_drops["internal_error"] == 0
        # A clean DISCOVER is still answered.
        before = core.sent["offer"]
        sock.sendto(seeds[4][1], ("10.213.0.1", 67))  # udhcpc's DISCOVER
        await until(lambda: core.sent["offer"] == before + 1)
    finally:
        sock.close()
        await server.close()
