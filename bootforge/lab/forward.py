"""A TCP forwarder from the host's loopback into a lab namespace: how the host reaches the lab's API.

The lab's `bootforge serve` runs inside the lab namespace and listens on the bridge address there,
where the VMs' ramdisks reach it. The host has no route into the namespace (no veth to the host
may exist: host interfaces are never touched), so this process listens on 127.0.0.1 of the host
and, per connection, opens a socket *inside* the namespace (bootforge.lab.netns.SocketFactory)
and copies bytes both ways. Run as ``python -m bootforge.lab.forward LISTEN NETNS TARGET [LABEL]``;
LABEL (the lab directory) only marks the process as the lab's, so `lab down` can find it by PID.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sys

from bootforge.lab.netns import SocketFactory

__all__ = ["main", "serve"]

_CHUNK = 65536


def _host_port(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit():
        raise SystemExit(f"expected HOST:PORT, got {value!r}")
    return host.strip("[]"), int(port)  # [fd77::1]:6385 in an IPv6 lab


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(_CHUNK):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(OSError):
            if writer.can_write_eof():
                writer.write_eof()


async def _connect(factory: SocketFactory, target: tuple[str, int]) -> socket.socket:
    family = socket.AF_INET6 if ":" in target[0] else socket.AF_INET
    sock = await asyncio.to_thread(factory.socket, family, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        await asyncio.wait_for(asyncio.get_running_loop().sock_connect(sock, target), 10)
    except BaseException:
        sock.close()
        raise
    return sock


async def serve(listen: tuple[str, int], netns: str, target: tuple[str, int]) -> None:
    if not listen[0].startswith("127."):
        raise SystemExit("the lab forwarder only listens on loopback")
    factory = SocketFactory(netns)

    async def handle(c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        try:
            sock = await _connect(factory, target)
        except (OSError, TimeoutError):
            c_writer.close()
            return
        s_reader, s_writer = await asyncio.open_connection(sock=sock)
        try:
            await asyncio.gather(_pipe(c_reader, s_writer), _pipe(s_reader, c_writer))
        finally:
            for w in (c_writer, s_writer):
                w.close()

    server = await asyncio.start_server(handle, listen[0], listen[1])
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if len(args) not in (3, 4):
        raise SystemExit("usage: python -m bootforge.lab.forward 127.0.0.1:PORT NETNS HOST:PORT [LABEL]")
    asyncio.run(serve(_host_port(args[0]), args[1], _host_port(args[2])))


if __name__ == "__main__":
    main()
