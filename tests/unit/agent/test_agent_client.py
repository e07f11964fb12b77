"""The agent's HTTP client against a real (loopback) HTTP server: requests, statuses, retries."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from agent_fakes import FakeTime

from bootforge.agent.client import (
    BOOT_TOKEN_HEADER,
    TOKEN_HEADER,
    BadReply,
    Client,
    Command,
    Conflict,
    HttpError,
    Lookup,
    NotFound,
    ServerError,
    TransportError,
    Unauthorized,
)

NODE = "1be26c0b-03f2-4d2e-ae87-c02d7f33c123"
CONFIG: dict[str, Any] = {"agent_token": "tok", "poll_timeout": 30, "progress_interval": 0.5}
LOOKUP_BODY: dict[str, Any] = {"node": {"uuid": NODE, "name": "n1", "properties": {}}, "config": CONFIG}

Reply = tuple[int, bytes]


class Recorder:
    """What the server saw, and the replies it gives in order (the last one repeats)."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []
        self.replies: list[Reply] = [(200, b"{}")]
        self.lock = threading.Lock()

    def reply_with(self, *replies: tuple[int, Any]) -> None:
        self.replies = [(s, b if isinstance(b, bytes) else json.dumps(b).encode()) for s, b in replies]

    def next_reply(self) -> Reply:
        with self.lock:
            return self.replies.pop(0) if len(self.replies) > 1 else self.replies[0]


@pytest.fixture
def server() -> Iterator[tuple[str, Recorder]]:
    rec = Recorder()

    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            rec.seen.append(
                {"method": self.command, "path": self.path, "headers": dict(self.headers), "body": body}
            )
            status, data = rec.next_reply()
            self.send_response(status)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = _serve

        def log_message(self, format: str, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", rec
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(10)


def test_lookup_sends_macs_and_node_without_a_token(server: tuple[str, Recorder]) -> None:
    url, rec = server
    rec.reply_with((200, LOOKUP_BODY))
    client = Client(url)
    client.token = "stale"
    found = client.lookup(["52:54:00:00:00:01", "52:54:00:00:00:02"], NODE)
    assert (found.node_uuid, found.node_name, found.token) == (NODE, "n1", "tok")
    assert (found.poll_timeout, found.progress_interval) == (30, 0.5)
    req = rec.seen[0]
    assert req["method"] == "GET"
    assert req["path"] == f"/v1/lookup?addresses=52:54:00:00:00:01,52:54:00:00:00:02&node_uuid={NODE}"
    assert TOKEN_HEADER not in req["headers"]


def test_lookup_sends_the_boot_token_in_its_header_never_in_the_url(server: tuple[str, Recorder]) -> None:
    url, rec = server
    rec.reply_with((200, LOOKUP_BODY))
    Client(url).lookup(["52:54:00:00:00:01"], NODE, "ab" * 32)
    req = rec.seen[0]
    assert req["headers"][BOOT_TOKEN_HEADER] == "ab" * 32
    assert "ab" * 32 not in req["path"] and TOKEN_HEADER not in req["headers"]


def test_lookup_without_node_uuid_and_under_a_path_prefix(server: tuple[str, Recorder]) -> None:
    url, rec = server
    rec.reply_with((200, LOOKUP_BODY))
    Client(url + "/baremetal/").lookup(["52:54:00:00:00:01"], None)
    assert rec.seen[0]["path"] == "/baremetal/v1/lookup?addresses=52:54:00:00:00:01"


def test_poll_and_post_carry_the_token(server: tuple[str, Recorder]) -> None:
    url, rec = server
    rec.reply_with((200, {"id": "c1", "name": "inspect", "args": {"lldp_wait": 0}}), (204, b""), (200, b"{}"))
    client = Client(url)
    client.token = "tok"
    command = client.next_command(NODE, 7)
    assert command is not None
    assert (command.id, command.name, command.args) == ("c1", "inspect", {"lldp_wait": 0})
    assert client.next_command(NODE, 7) is None
    client.post(NODE, "c/1", {"status": "succeeded", "result": {}})
    assert [r["path"] for r in rec.seen] == [
        f"/v1/nodes/{NODE}/agent/command?wait=7",
        f"/v1/nodes/{NODE}/agent/command?wait=7",
        f"/v1/nodes/{NODE}/agent/command/c%2F1",
    ]
    assert all(r["headers"][TOKEN_HEADER] == "tok" for r in rec.seen)
    assert json.loads(rec.seen[2]["body"]) == {"status": "succeeded", "result": {}}
    assert rec.seen[2]["headers"]["Content-Type"] == "application/json"


@pytest.mark.parametrize(
    ("status", "error"),
    [(401, Unauthorized), (404, NotFound), (409, Conflict), (503, ServerError), (400, HttpError)],
)
def test_error_statuses_raise_their_exception_with_the_servers_words(
    server: tuple[str, Recorder], status: int, error: type[HttpError]
) -> None:
    url, rec = server
    rec.reply_with((status, {"error": "the reason"}))
    with pytest.raises(error) as caught:
        Client(url).post(NODE, "c1", {"status": "running"})
    assert type(caught.value) is error
    assert caught.value.status == status and caught.value.detail == "the reason"


def test_ironic_shaped_and_plain_text_errors_are_reported(server: tuple[str, Recorder]) -> None:
    url, rec = server
    rec.reply_with((409, {"error_message": "busy"}), (500, b"Internal Server Error"))
    with pytest.raises(Conflict, match="busy"):
        Client(url).post(NODE, "c1", {})
    with pytest.raises(ServerError, match="Internal Server Error"):
        Client(url).post(NODE, "c1", {})


def test_success_with_a_body_that_is_not_json_is_a_bad_reply(server: tuple[str, Recorder]) -> None:
    url, rec = server
    rec.reply_with((200, b"<html>"))
    with pytest.raises(BadReply, match="not JSON"):
        Client(url).next_command(NODE, 1)


def test_refused_connection_is_a_transport_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(TransportError, match="ConnectionRefusedError"):
        Client(f"http://127.0.0.1:{port}").post(NODE, "c1", {})


def test_silent_server_times_out_as_a_transport_error() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        client = Client(f"http://127.0.0.1:{listener.getsockname()[1]}", timeout=0.2)
        with pytest.raises(TransportError, match="timed out"):
            client.post(NODE, "c1", {})


def test_only_http_urls() -> None:
    with pytest.raises(ValueError, match="http"):
        Client("ftp://10.0.0.1/")
    with pytest.raises(ValueError, match="http"):
        Client("10.0.0.1:6385")


def test_final_result_retries_5xx_with_backoff(server: tuple[str, Recorder]) -> None:
    url, rec = server
    rec.reply_with((503, b""), (502, b""), (500, b""), (200, {"accepted": True}))
    t = FakeTime()
    retried: list[float] = []
    Client(url).post_final(
        NODE,
        "c1",
        {"status": "succeeded"},
        on_retry=lambda e, d: retried.append(d),
        sleep=t.sleep,
        clock=t.clock,
    )
    assert t.sleeps == retried == [1.0, 2.0, 4.0]
    assert len(rec.seen) == 4


def test_final_result_gives_up_after_its_patience(server: tuple[str, Recorder]) -> None:
    url, rec = server
    rec.reply_with((503, b"down"))
    t = FakeTime()
    with pytest.raises(ServerError):
        Client(url).post_final(NODE, "c1", {}, patience=100, sleep=t.sleep, clock=t.clock)
    assert t.sleeps == [1, 2, 4, 8, 16, 30, 30, 9]
    assert sum(t.sleeps) == 100


@pytest.mark.parametrize("status", [401, 409, 400])
def test_final_result_is_not_retried_when_it_cannot_help(server: tuple[str, Recorder], status: int) -> None:
    url, rec = server
    rec.reply_with((status, b"{}"))
    t = FakeTime()
    with pytest.raises(HttpError):
        Client(url).post_final(NODE, "c1", {}, sleep=t.sleep, clock=t.clock)
    assert t.sleeps == [] and len(rec.seen) == 1


def test_final_result_retries_refused_connections() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t = FakeTime()
    with pytest.raises(TransportError):
        Client(f"http://127.0.0.1:{port}").post_final(
            NODE, "c1", {}, patience=5, sleep=t.sleep, clock=t.clock
        )
    assert t.sleeps == [1, 2, 2]


@pytest.mark.parametrize(
    "body",
    [
        None,
        [],
        {"node": {"uuid": NODE}},
        {"node": {"uuid": ""}, "config": CONFIG},
        {"node": {"uuid": NODE}, "config": {**CONFIG, "agent_token": None}},
        {"node": {"uuid": NODE}, "config": {**CONFIG, "poll_timeout": "30"}},
        {"node": {"uuid": NODE}, "config": {**CONFIG, "progress_interval": -1}},
        {"node": {"uuid": NODE}, "config": {**CONFIG, "poll_timeout": True}},
        {"node": "x", "config": CONFIG},
    ],
)
def test_malformed_lookup_replies_are_bad_replies(body: object) -> None:
    with pytest.raises(BadReply):
        Lookup.from_json(body)


def test_commands_need_an_id_only() -> None:
    bodies: list[Any] = [None, [], {}, {"id": ""}, {"id": 5, "name": "inspect"}]
    for body in bodies:
        with pytest.raises(BadReply):
            Command.from_json(body)
    odd = Command.from_json({"id": "c1", "name": 7, "args": [1]})
    assert (odd.name, odd.args) == ("7", [1])
    assert Command.from_json({"id": "c2", "name": "erase"}).args == {}
