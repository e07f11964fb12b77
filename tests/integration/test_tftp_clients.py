"""The asyncio TFTP server against real clients (curl, atftp, tftp-hpa) and a raw UDP client.

Every case runs on 127.0.0.1 with an ephemeral port, and in namespaces (server ns 10.213.0.1
port 69, client ns 10.213.0.50) from the shared `netns_lan` fixture; and cases on the `running`
server run with both data planes (native: lockstep data phases in C threads; python). The
server runs in this process; its sockets are created inside the server namespace by a
SocketFactory.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib
import os
import shutil
import socket
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from support.netns import Lan

from bootforge.lab.netns import SocketFactory
from bootforge.netboot.tftp import (
    Ack,
    ClientAddress,
    Error,
    FileSystemSource,
    OAck,
    Opcode,
    Request,
    encode_packet,
    parse_packet,
)
from bootforge.servers.tftp import DataPlaneChoice, TftpEvent, TftpServer

CLIENT_IP = "10.213.0.50"
REPLY_TIMEOUT = 10.0


@dataclass
class Env:
    """Where the server listens and how to run things on the client side."""

    server_ip: str
    client_ip: str
    server_sockets: Callable[[int, int], socket.socket]
    client_sockets: Callable[[int, int], socket.socket]
    exec_prefix: Sequence[str] = ()
    port: int = 69
    cleanups: list[Callable[[], None]] = field(default_factory=list)


@pytest.fixture
def loopback_env() -> Env:
    return Env("127.0.0.1", "127.0.0.1", socket.socket, socket.socket, port=0)


@pytest.fixture
def netns_env(netns_lan: Lan) -> Iterator[Env]:
    client = netns_lan.client
    client.ns.ip("addr", "add", f"{CLIENT_IP}/24", "dev", client.ifname)
    server_factory = SocketFactory(netns_lan.server.ns.name)
    client_factory = SocketFactory(client.ns.name)
    env = Env(
        str(netns_lan.server.ip),
        CLIENT_IP,
        server_factory.socket,
        client_factory.socket,
        exec_prefix=("ip", "netns", "exec", client.ns.name),
    )
    yield env
    server_factory.close()
    client_factory.close()


@pytest.fixture(params=["loopback", "netns"])
def env(request: pytest.FixtureRequest) -> Env:
    return request.getfixturevalue(f"{request.param}_env")  # type: ignore[no-any-return]


@pytest.fixture
def tftp_root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "grub").mkdir(parents=True)
    rng = os.urandom
    (root / "small.bin").write_bytes(rng(1000))
    (root / "exact.bin").write_bytes(rng(1468 * 8))
    (root / "big.bin").write_bytes(rng(3 * 1024 * 1024 + 7))
    (root / "text.cfg").write_bytes(b"set timeout=5\nmenuentry x {\n\tlinux /vmlinuz\n}\n")
    (root / "shim.efi").symlink_to("big.bin")
    (tmp_path / "secret").write_bytes(b"top secret outside the root\n")
    (root / "escape").symlink_to(tmp_path / "secret")
    return root


@dataclass
class Running:
    server: TftpServer
    env: Env
    root: Path
    events: list[TftpEvent]

    @property
    def address(self) -> tuple[str, int]:
        return (self.env.server_ip, self.server.local_address[1])


def render(path: str, client: ClientAddress) -> bytes | None:
    if path == "grub/grub.cfg":
        return f"# for {client[0]}\nset default=0\n".encode()
    return None


@pytest.fixture(params=["native", "python"])
def dataplane(request: pytest.FixtureRequest) -> DataPlaneChoice:
    if request.param == "native":
        try:
            importlib.import_module("bootforge.servers._tftp_dataplane")
        except ImportError as exc:
            pytest.skip(f"needs the native TFTP data plane built ({exc}): pip install -e . with gcc")
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
async def running(env: Env, tftp_root: Path, dataplane: DataPlaneChoice) -> AsyncIterator[Running]:
    events: list[TftpEvent] = []
    server = TftpServer(
        FileSystemSource(tftp_root, render),
        env.server_ip,
        port=env.port,
        on_event=events.append,
        socket_factory=env.server_sockets,
        dataplane=dataplane,
    )
    async with server:
        yield Running(server, env, tftp_root, events)


async def run_client(run: Running, argv: Sequence[str]) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        *run.env.exec_prefix,
        *argv,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), 120)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    return proc.returncode or 0, out.decode(errors="replace")


def need(binary: str) -> str:
    path = shutil.which(binary)
    if path is None:
        pytest.skip(f"needs {binary} (Debian package: {'tftp-hpa' if binary == 'tftp' else binary})")
    return path


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


CURL_VARIANTS = {
    "defaults": [],
    "blksize1468": ["--tftp-blksize", "1468"],
    "blksize8192-capped": ["--tftp-blksize", "8192"],
    "no-options": ["--tftp-no-options"],
}


@pytest.mark.parametrize("name", ["small.bin", "exact.bin", "big.bin", "shim.efi"])
@pytest.mark.parametrize("variant", list(CURL_VARIANTS))
async def test_curl_fetches_identical_bytes(
    running: Running, tmp_path: Path, name: str, variant: str, dataplane: DataPlaneChoice
) -> None:
    curl = need("curl")
    out = tmp_path / "out"
    host, port = running.address
    argv = [curl, "-sS", *CURL_VARIANTS[variant], "-o", str(out), f"tftp://{host}:{port}/{name}"]
    rc, text = await run_client(running, argv)
    assert rc == 0, text
    assert sha(out) == sha(running.root / name)
    await settle(running)
    (event,) = running.events
    assert event.outcome == "completed"
    assert event.client[0] == running.env.client_ip
    assert event.bytes_sent == (running.root / name).stat().st_size
    assert event.blksize <= 1468
    # curl runs lockstep: with the native data plane, its data phase ran there
    assert running.server.counters.native == (dataplane == "native")


ATFTP_VARIANTS = {
    "plain": [],
    "blksize1468": ["--option", "blksize 1468"],
    "windowsize8": ["--option", "blksize 1468", "--option", "windowsize 8"],
    "windowsize4-tsize": ["--option", "tsize", "--option", "windowsize 4"],
}


@pytest.mark.parametrize("name", ["small.bin", "exact.bin", "big.bin"])
@pytest.mark.parametrize("variant", list(ATFTP_VARIANTS))
async def test_atftp_fetches_identical_bytes(
    running: Running, tmp_path: Path, name: str, variant: str
) -> None:
    atftp = need("atftp")
    out = tmp_path / "out"
    host, port = running.address
    argv = [atftp, *ATFTP_VARIANTS[variant], "-g", "-r", name, "-l", str(out), host, str(port)]
    rc, text = await run_client(running, argv)
    assert rc == 0, text
    assert sha(out) == sha(running.root / name)
    await settle(running)
    (event,) = running.events
    assert event.outcome == "completed"
    if variant == "windowsize8":
        assert (event.blksize, event.windowsize) == (1468, 8)


@pytest.mark.parametrize(("mode", "name"), [("binary", "big.bin"), ("netascii", "text.cfg")])
async def test_tftp_hpa_client_fetches_identical_bytes(
    running: Running, tmp_path: Path, mode: str, name: str
) -> None:
    tftp = need("tftp")
    out = tmp_path / "out"
    host, port = running.address
    argv = [tftp, "-m", mode, host, str(port), "-c", "get", name, str(out)]
    rc, text = await run_client(running, argv)
    assert rc == 0, text
    assert sha(out) == sha(running.root / name)


async def test_virtual_file_is_rendered_for_the_asking_client(running: Running, tmp_path: Path) -> None:
    curl = need("curl")
    out = tmp_path / "out"
    host, port = running.address
    rc, text = await run_client(
        running, [curl, "-sS", "-o", str(out), f"tftp://{host}:{port}//grub/grub.cfg"]
    )
    assert rc == 0, text
    assert out.read_bytes() == f"# for {running.env.client_ip}\nset default=0\n".encode()


async def settle(run: Running) -> None:
    """The client may exit before our side saw its last ACK; wait for the transfer to end."""
    for _ in range(500):
        if run.server.active_transfers == 0:
            return
        await asyncio.sleep(0.01)


class RawClient:
    """A bare UDP socket on the client side, for exchanges real clients cannot produce."""

    def __init__(self, run: Running) -> None:
        family = socket.AF_INET
        self.sock = run.env.client_sockets(family, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        self.sock.bind((run.env.client_ip, 0))
        self.server = run.address
        self.loop = asyncio.get_running_loop()

    async def send(self, data: bytes, to: tuple[str, int] | None = None) -> None:
        await self.loop.sock_sendto(self.sock, data, to or self.server)

    async def recv(self) -> tuple[bytes, tuple[str, int]]:
        data, source = await asyncio.wait_for(self.loop.sock_recvfrom(self.sock, 70000), REPLY_TIMEOUT)
        return data, source

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
async def raw(running: Running) -> AsyncIterator[RawClient]:
    client = RawClient(running)
    yield client
    client.close()


def rrq(name: str, **options: str) -> bytes:
    return encode_packet(Request(Opcode.RRQ, name, "octet", dict(options)))


@pytest.mark.parametrize(
    ("name", "code"),
    [
        ("../secret", 2),
        ("grub/../../secret", 2),
        ("..\\secret", 2),
        ("escape", 2),
        ("/etc/passwd", 1),
        ("revocations_sku.efi", 1),
    ],
)
async def test_refused_paths_get_an_error_and_no_data(
    running: Running, raw: RawClient, name: str, code: int
) -> None:
    await raw.send(rrq(name))
    data, source = await raw.recv()
    reply = parse_packet(data)
    assert isinstance(reply, Error) and reply.code == code
    assert source[1] != running.address[1]  # errors come from a fresh TID too
    await settle(running)
    assert running.events[0].outcome == ("denied" if code == 2 else "not_found")


async def test_atftp_traversal_is_refused(running: Running, tmp_path: Path) -> None:
    atftp = need("atftp")
    out = tmp_path / "out"
    host, port = running.address
    argv = [atftp, "-g", "-r", "../secret", "-l", str(out), host, str(port)]
    rc, _ = await run_client(running, argv)
    assert rc != 0
    assert not out.exists() or b"secret" not in out.read_bytes()


async def test_uefi_size_probe_then_download(running: Running, raw: RawClient) -> None:
    """OVMF: RRQ tsize=0 -> OACK -> ERROR 8, then the real RRQ (LOCAL-1 capture)."""
    size = (running.root / "small.bin").stat().st_size
    await raw.send(rrq("small.bin", tsize="0", blksize="1468", windowsize="4"))
    data, tid = await raw.recv()
    assert parse_packet(data) == OAck({"tsize": str(size), "blksize": "1468", "windowsize": "4"})
    await raw.send(encode_packet(Error(8, "User aborted the transfer")), tid)
    await raw.send(rrq("small.bin", blksize="1468", windowsize="4"))
    data, tid2 = await raw.recv()
    assert tid2 != tid
    assert parse_packet(data) == OAck({"blksize": "1468", "windowsize": "4"})
    # A stranger on the transfer's port gets ERROR 5 and does not disturb the transfer.
    stranger = RawClient(running)
    try:
        await stranger.send(encode_packet(Ack(0)), tid2)
        reply, _ = await stranger.recv()
        assert parse_packet(reply) == Error(5, "unknown transfer ID")
    finally:
        stranger.close()
    await raw.send(encode_packet(Ack(0)), tid2)
    data, _ = await raw.recv()
    assert data[:4] == b"\0\x03\0\x01" and len(data) == 4 + size
    await raw.send(encode_packet(Ack(1)), tid2)
    await settle(running)
    assert [e.outcome for e in running.events] == ["size_probe", "completed"]
    assert running.server.counters.size_probes == 1
    assert running.server.counters.foreign_tid == 1


async def test_garbage_on_the_request_port_is_counted_not_fatal(running: Running, raw: RawClient) -> None:
    for junk in (b"", b"\0", b"\xff\xff\xff\xff", b"\0\x01noterminator", encode_packet(Ack(3))):
        await raw.send(junk)
    await raw.send(rrq("revocations_sku.efi"))
    data, _ = await raw.recv()
    assert parse_packet(data) == Error(1, "file not found")
    counters = running.server.counters
    assert counters.malformed == 4
    assert counters.unexpected == 1


async def test_windowed_transfer_without_gso(env: Env, tftp_root: Path, tmp_path: Path) -> None:
    """The per-packet send path (kernels or NICs without UDP segmentation offload)."""
    atftp = need("atftp")
    server = TftpServer(
        FileSystemSource(tftp_root),
        env.server_ip,
        port=env.port,
        socket_factory=env.server_sockets,
        gso=False,
    )
    async with server:
        run = Running(server, env, tftp_root, [])
        host, port = run.address
        out = tmp_path / "out"
        opts = ["--option", "blksize 1468", "--option", "windowsize 16"]
        argv = [atftp, *opts, "-g", "-r", "big.bin", "-l", str(out), host, str(port)]
        rc, text = await run_client(run, argv)
    assert rc == 0, text
    assert sha(out) == sha(tftp_root / "big.bin")


async def test_wildcard_listener_answers_from_the_arrival_address(
    netns_env: Env, tftp_root: Path, tmp_path: Path
) -> None:
    """Bound to 0.0.0.0 (only ever inside the namespace): IP_PKTINFO picks the reply address."""
    curl = need("curl")
    events: list[TftpEvent] = []
    server = TftpServer(
        FileSystemSource(tftp_root),
        "0.0.0.0",
        on_event=events.append,
        socket_factory=netns_env.server_sockets,
    )
    async with server:
        run = Running(server, netns_env, tftp_root, events)
        out = tmp_path / "out"
        url = f"tftp://{netns_env.server_ip}/small.bin"
        rc, text = await run_client(run, [curl, "-sS", "-o", str(out), url])
        await settle(run)
    assert rc == 0, text
    assert sha(out) == sha(tftp_root / "small.bin")
    assert events[0].server[0] == netns_env.server_ip


async def test_ipv6_loopback(tftp_root: Path, tmp_path: Path) -> None:
    curl = need("curl")
    if not socket.has_ipv6:
        pytest.skip("needs IPv6")
    server = TftpServer(FileSystemSource(tftp_root), "::1", port=0)
    try:
        await server.start()
    except OSError as exc:
        pytest.skip(f"needs IPv6 on lo ({exc})")
    try:
        assert server.config.max_blksize == 1448  # 1500 - 40 - 8 - 4
        env = Env("::1", "::1", socket.socket, socket.socket, port=0)
        run = Running(server, env, tftp_root, [])
        out = tmp_path / "out"
        url = f"tftp://[::1]:{server.local_address[1]}/big.bin"
        rc, text = await run_client(run, [curl, "-sS", "--tftp-blksize", "1468", "-o", str(out), url])
    finally:
        await server.aclose()
    assert rc == 0, text
    assert sha(out) == sha(tftp_root / "big.bin")


async def test_retransmitted_rrq_is_ignored_and_oack_is_resent_on_timeout(
    running: Running, raw: RawClient
) -> None:
    request = rrq("small.bin", blksize="1468", timeout="1")
    await raw.send(request)
    first, tid = await raw.recv()
    await raw.send(request)  # as a client does when our OACK is slow: must not fork a transfer
    again, tid_again = await raw.recv()  # nothing is sent until the 1 s timer fires
    assert (again, tid_again) == (first, tid)
    assert running.server.counters.duplicate_requests == 1
    await raw.send(encode_packet(Error(0, "enough")), tid)
    await settle(running)
    (event,) = running.events
    assert event.outcome == "client_error" and event.retransmits >= 1


async def lockstep_fetch(client: RawClient, name: str, duplicate_every: int) -> bytes:
    """RFC 1350 without options; every `duplicate_every`-th ACK is sent twice."""
    await client.send(rrq(name))
    received = bytearray()
    block = 1
    while True:
        data, tid = await client.recv()
        assert data[:4] == b"\0\x03" + block.to_bytes(2, "big"), data[:4]
        received += data[4:]
        for _ in range(2 if block % duplicate_every == 0 else 1):
            await client.send(encode_packet(Ack(block)), tid)
        if len(data) < 4 + 512:
            return bytes(received)
        block += 1


async def test_concurrent_lockstep_transfers_with_duplicate_acks(running: Running) -> None:
    """Lockstep ACKs take the server's fast path; a duplicated ACK is ignored (RFC 1350's
    Sorcerer's Apprentice), so no client ever sees a DATA block twice."""
    payload = os.urandom(512 * 150 + 77)  # several read-ahead refills per transfer
    (running.root / "lockstep.bin").write_bytes(payload)
    clients = [RawClient(running) for _ in range(6)]
    try:
        fetched = await asyncio.gather(*(lockstep_fetch(c, "lockstep.bin", 7) for c in clients))
        await settle(running)
        for client in clients:  # nothing answered a duplicate: no datagram is left over
            with pytest.raises(BlockingIOError):
                client.sock.recv(70000)
    finally:
        for client in clients:
            client.close()
    assert fetched == [payload] * len(clients)
    assert [e.outcome for e in running.events] == ["completed"] * len(clients)
    assert running.server.counters.stale_acks == len(clients) * (151 // 7)
