"""Issue #11 finding 15 against a real `bootforge serve` (uvicorn + httptools) on loopback.

The in-process tests (tests/unit/api/test_hardening_api.py) check the answers; these check the
server stops reading: a body over the limit is refused from its Content-Length before it is sent,
and a request head with too many or too large header fields is cut off with 431.
"""

from __future__ import annotations

import contextlib
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from support.service import Served, served


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    yield from served(tmp_path_factory.mktemp("limits"))


def exchange(server: Served, head: bytes, body: bytes = b"", timeout: float = 10) -> bytes:
    """Send a raw request; return what the server answered before closing (or timeout)."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=timeout) as s:
        s.sendall(head)
        if body:
            # The server may answer and close while the body is still going out.
            with contextlib.suppress(OSError):
                s.sendall(body)
        data = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = s.recv(65536)
            except (TimeoutError, ConnectionResetError):
                break
            if not chunk:
                break
            data += chunk
            if b"\r\n\r\n" in data and data.split(b"\r\n\r\n", 1)[1].rstrip().endswith(b"}"):
                break
        return data


def test_a_64_mib_body_is_refused_from_its_content_length(server: Served) -> None:
    size = 64 << 20
    head = (
        f"POST /v1/nodes HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {size}\r\n\r\n"
    ).encode()
    started = time.monotonic()
    # Only the head is sent: the answer must come without the server waiting for 64 MiB.
    answer = exchange(server, head)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    fault = json.loads(json.loads(answer.split(b"\r\n\r\n", 1)[1])["error_message"])["faultstring"]
    assert "1048576" in fault and "max_body_bytes" in fault
    assert time.monotonic() - started < 5


# The heads below are never finished (no blank line): the answer proves the server stopped reading
# at the limit instead of buffering whatever a client sends.


def test_ten_thousand_headers_are_cut_off_with_431(server: Served) -> None:
    head = b"GET /v1/nodes HTTP/1.1\r\nHost: 127.0.0.1\r\n" + b"".join(
        b"X-H%d: 1\r\n" % i for i in range(10_000)
    )
    answer = exchange(server, head, timeout=5)
    assert answer.startswith(b"HTTP/1.1 431"), answer[:200]
    # Whichever limit the server meets first (count or bytes, by how the head arrives) answers.
    assert b"setting api_limits.max_header" in answer


def test_a_megabyte_header_is_cut_off_with_431(server: Served) -> None:
    head = b"GET /v1/nodes HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * (1 << 20)
    answer = exchange(server, head, timeout=5)
    assert answer.startswith(b"HTTP/1.1 431"), answer[:200]
    assert b"max_header_bytes" in answer


def test_ordinary_requests_still_pass_and_the_connection_is_reused(server: Served) -> None:
    with httpx.Client(base_url=server.url, headers={"X-OpenStack-Ironic-API-Version": "1.78"}) as c:
        for _ in range(3):
            assert c.get("/v1/nodes").status_code == 200
        r = c.post("/v1/nodes", json={"driver": "fake-hardware", "extra": {"x": "y" * 1000}})
        assert r.status_code == 201, r.text


def test_state_dir_and_database_are_private(server: Served) -> None:
    assert Path(server.state_dir).stat().st_mode & 0o077 == 0
    for f in Path(server.state_dir).glob("bootforge.sqlite*"):
        assert f.stat().st_mode & 0o077 == 0, f


def test_more_header_fields_than_allowed_are_refused_by_count(server: Served) -> None:
    head = b"GET /v1/nodes HTTP/1.1\r\nHost: 127.0.0.1\r\n" + b"".join(
        b"X-H%d: 1\r\n" % i for i in range(150)
    )
    answer = exchange(server, head, timeout=5)  # unfinished: refused at the 101st field
    assert answer.startswith(b"HTTP/1.1 431"), answer[:200]
    assert b"more than 100 header fields" in answer
