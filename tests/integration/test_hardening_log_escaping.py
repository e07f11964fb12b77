"""Issue #11: what a stranger sends reaches log lines and timeline events as one escaped line.

A TFTP file name and an HTTP boot path carrying a newline (a forged second log line) and an ANSI escape
(repainting an operator's terminal) go to real servers on 127.0.0.1 that feed the product's own
composition (cli.netboot.Netboot); the servers' log records and the node's timeline must show them
escaped, on one line, and an over-long name cut with a marker.
"""

from __future__ import annotations

import logging
import socket
from pathlib import Path

import httpx
import pytest
from support.service import InProcess
from support.timeline import timeline, until

from bootforge.cli.netboot import Netboot
from bootforge.conductor.netboot import EventSink, NetbootView
from bootforge.netboot.tftp import FileSystemSource, Opcode, Request, encode_packet
from bootforge.servers.http_boot import HttpBootServer, HttpFetchEvent
from bootforge.servers.tftp import TftpEvent, TftpServer

MAC = "52:54:00:aa:bb:02"
EVIL = "boot\nFORGED root logged in \x1b[31mred"
SHOWN = "boot\\x0aFORGED root logged in \\x1b[31mred"


async def enrol(bf: InProcess) -> str:
    node = (await bf.client.post("/v1/nodes", json={"driver": "fake-hardware", "name": "n1"})).json()
    r = await bf.client.post("/v1/ports", json={"node_uuid": node["uuid"], "address": MAC})
    assert r.status_code == 201, r.text
    return str(node["uuid"])


def messages(caplog: pytest.LogCaptureFixture, logger: str, start: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == logger and r.getMessage().startswith(start)]


def assert_one_escaped_line(text: str, shown: str) -> None:
    assert "\n" not in text and "\r" not in text and "\x1b" not in text, repr(text)
    assert text.isprintable(), repr(text)
    assert shown in text, (shown, text)


@pytest.fixture
async def netboot(bf: InProcess) -> tuple[Netboot, str]:
    uuid = await enrol(bf)
    view = NetbootView(bf.conductor.db)
    await view.refresh()
    nb = Netboot(view, EventSink(bf.conductor.db, "test"))
    nb.ip_to_node["127.0.0.1"] = uuid  # what DHCP would have taught it
    return nb, uuid


async def test_a_tftp_file_name_with_a_newline_and_an_ansi_escape_is_logged_escaped(
    bf: InProcess, netboot: tuple[Netboot, str], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    nb, uuid = netboot
    seen: list[TftpEvent] = []

    def on_event(e: TftpEvent) -> None:
        seen.append(e)
        nb.on_tftp(e)

    caplog.set_level(logging.INFO, logger="bootforge.tftp")
    long_name = "x/" + "\x1b" * 300
    async with TftpServer(FileSystemSource(tmp_path), "127.0.0.1", port=0, on_event=on_event) as srv:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            for name in (EVIL, long_name):
                client.sendto(encode_packet(Request(Opcode.RRQ, name, "octet", {})), srv.local_address)
            await until(lambda: len(seen) == 2)
    assert seen[0].filename == EVIL  # the event keeps what was asked for; its renderings escape it

    logged = messages(caplog, "bootforge.tftp", "TFTP 127.0.0.1")
    assert len(logged) == 2, logged
    assert_one_escaped_line(logged[0], SHOWN)
    assert_one_escaped_line(logged[1], "x/" + "\\x1b" * 10)
    assert "...[" in logged[1] and len(logged[1]) < 600

    await nb.sink.flush()
    events = await timeline(bf, uuid, "tftp")
    assert len(events) == 2, events
    assert_one_escaped_line(events[0], SHOWN)
    assert "...[" in events[1] and len(events[1]) < 600


async def test_an_http_boot_path_with_a_newline_and_an_ansi_escape_is_logged_escaped(
    bf: InProcess, netboot: tuple[Netboot, str], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    nb, uuid = netboot
    seen: list[HttpFetchEvent] = []

    def on_event(e: HttpFetchEvent) -> None:
        seen.append(e)
        nb.on_http(e)

    caplog.set_level(logging.INFO, logger="bootforge.http_boot")
    async with HttpBootServer(tmp_path, port=0, on_event=on_event) as srv:
        host, port = srv.local_address
        async with httpx.AsyncClient(base_url=f"http://{host}:{port}") as client:
            # Percent-encoded on the wire; the server decodes the path before it looks for the file.
            r = await client.get("/boot%0AFORGED%20root%20logged%20in%20%1B%5B31mred", params={"mac": MAC})
            assert r.status_code == 404
            r = await client.get("/a" * 40, headers={"Range": "bytes=0-1\x1b[2J"}, params={"mac": MAC})
    await until(lambda: len(seen) == 2)
    assert seen[0].path == "/" + EVIL

    logged = messages(caplog, "bootforge.http_boot", "HTTP 127.0.0.1")
    assert len(logged) == 2, logged
    assert_one_escaped_line(logged[0], "/" + SHOWN)
    for line in logged[1:]:
        assert line.isprintable(), repr(line)

    await nb.sink.flush()
    events = await timeline(bf, uuid, "http")
    assert len(events) == 2, events
    assert_one_escaped_line(events[0], "/" + SHOWN)
    assert all(e.isprintable() for e in events)
