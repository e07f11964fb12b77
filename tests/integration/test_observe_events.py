"""Outbound events from a real `bootforge serve`: a webhook receiver on 127.0.0.1 (Python's http.server,
not bootforge code) gets every transition of a fake-hardware deploy in order, signed, and a retry after
answering 500 once; the SSE stream gives an httpx client the same transitions; `bootforge node events
--follow` prints the node's timeline as it grows."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import queue
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from support.lifecycle import act, client, create_nodes, history, in_state, wait_until
from support.service import BOOTFORGE, Served, served

SECRET = "receiver-shared-secret-0123456789"
TRANSITION_TIMEOUT = 30


@dataclass
class Delivery:
    headers: dict[str, str]
    body: bytes
    answered: int


@dataclass
class Receiver:
    """Answers 500 to the first POST, 204 to the rest; keeps every request."""

    fail_first: int = 1
    got: list[Delivery] = field(default_factory=list)
    changed: threading.Condition = field(default_factory=threading.Condition)

    def handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with receiver.changed:
                    status = 500 if len(receiver.got) < receiver.fail_first else 204
                    receiver.got.append(Delivery(dict(self.headers.items()), body, status))
                    receiver.changed.notify_all()
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        return Handler

    def wait_for(self, done: Any, timeout: float) -> list[Delivery]:
        deadline = time.monotonic() + timeout
        with self.changed:
            while not done(self.got):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"receiver: not there after {timeout}s; got {len(self.got)} POSTs")
                self.changed.wait(left)
            return list(self.got)


@pytest.fixture
def receiver() -> Iterator[tuple[Receiver, str]]:
    r = Receiver()
    server = ThreadingHTTPServer(("127.0.0.1", 0), r.handler())
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield r, f"http://127.0.0.1:{server.server_address[1]}/hook"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
def bf_hooked(tmp_path: Path, receiver: tuple[Receiver, str]) -> Iterator[Served]:
    events = {
        "webhooks": [{"name": "test", "url": receiver[1], "secret": SECRET}],
        "backoff_initial": 0.2,
        "stream_poll_interval": 0.1,
    }
    env = {
        "BOOTFORGE_ENABLED_HARDWARE_TYPES": '["fake-hardware"]',
        "BOOTFORGE_EVENTS": json.dumps(events),
        "BOOTFORGE_POWER_SYNC_INTERVAL": "0",
    }
    yield from served(tmp_path, env)


class SseReader:
    """Reads an SSE stream in a thread (httpx, streaming) into a queue of (event, id, data)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.messages: queue.Queue[tuple[str | None, str | None, str]] = queue.Queue()
        self.subscribed = threading.Event()
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        from bootforge.cli.events import sse_messages

        def lines(r: httpx.Response) -> Iterator[str]:
            for line in r.iter_lines():
                if line.startswith(":"):
                    self.subscribed.set()
                if self.stop.is_set():
                    return
                yield line

        try:
            timeout = httpx.Timeout(10.0, read=None)
            with httpx.stream("GET", self.url, timeout=timeout) as r:
                assert r.status_code == 200, r.read()
                assert r.headers["content-type"].startswith("text/event-stream")
                for message in sse_messages(lines(r)):
                    self.messages.put(message)
        except BaseException as exc:  # reported to the test through wait()
            self.error = exc
            self.subscribed.set()

    def take(self, n: int, timeout: float) -> list[tuple[str | None, str | None, str]]:
        out = []
        deadline = time.monotonic() + timeout
        while len(out) < n:
            try:
                out.append(self.messages.get(timeout=max(0.0, deadline - time.monotonic())))
            except queue.Empty:
                raise AssertionError(
                    f"SSE: {len(out)} of {n} messages after {timeout}s ({self.error})"
                ) from None
        return out


def provision_transitions(node_history: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """(old, new) of each state change on the node's timeline, in order."""
    out = []
    for e in node_history:
        if e["event_type"] == "provisioning" and " -> " in e["event"]:
            old, rest = e["event"].split(" -> ", 1)
            out.append((old, rest.split(" (", 1)[0]))
    return out


def test_webhooks_and_stream_get_every_transition_in_order(
    bf_hooked: Served, receiver: tuple[Receiver, str]
) -> None:
    hook, _ = receiver
    sse = SseReader(f"{bf_hooked.url}/v1/events/stream?types=provision")
    assert sse.subscribed.wait(10) and sse.error is None, sse.error
    with client(bf_hooked.url) as c:
        [uuid] = create_nodes(c, ["hooked-1"])
        for verb, state in (("manage", "manageable"), ("provide", "available"), ("active", "active")):
            act(c, [uuid], verb)
            wait_until(c, [uuid], in_state(state), timeout=TRANSITION_TIMEOUT)
        expected = provision_transitions(history(c, uuid))
    assert expected[0] == ("enroll", "verifying") and expected[-1] == ("deploying", "active"), expected

    # The first POST was answered 500: it is sent again, and the receiver then has one of each.
    def complete(got: list[Delivery]) -> bool:
        return len({json.loads(d.body)["id"] for d in got if d.answered == 204}) >= len(expected)

    got = hook.wait_for(complete, timeout=TRANSITION_TIMEOUT)
    assert got[0].answered == 500
    assert json.loads(got[1].body)["id"] == json.loads(got[0].body)["id"], (
        "the refused event comes first again"
    )
    accepted = [d for d in got if d.answered == 204]
    seen = []
    for d in got:
        stamp = d.headers["X-Bootforge-Timestamp"]
        mac = hmac.new(SECRET.encode(), stamp.encode() + b"." + d.body, hashlib.sha256).hexdigest()
        assert hmac.compare_digest(d.headers["X-Bootforge-Signature"], f"sha256={mac}")
        assert abs(time.time() - int(stamp)) < 300
        assert d.headers["Content-Type"].startswith("application/cloudevents+json")
    for d in accepted:
        event = json.loads(d.body)
        assert event["specversion"] == "1.0" and event["subject"] == uuid
        assert event["type"] == "io.bootforge.node.provision"
        assert event["source"].startswith("/bootforge/")
        seen.append((event["data"]["previous_state"], event["data"]["provision_state"]))
    assert seen == expected
    # The retry is logged, naming the target; the secret never is.
    assert bf_hooked.log is not None
    log = bf_hooked.log.read_text()
    assert "webhook test (http://127.0.0.1" in log and "HTTP 500" in log, log[-2000:]
    assert SECRET not in log

    streamed = sse.take(len(expected), timeout=TRANSITION_TIMEOUT)
    sse.stop.set()
    assert [e for e, _, _ in streamed] == ["io.bootforge.node.provision"] * len(expected)
    pairs = [
        (json.loads(d)["data"]["previous_state"], json.loads(d)["data"]["provision_state"])
        for _, _, d in streamed
    ]
    assert pairs == expected
    # The stream and the webhook carry the same events (the same CloudEvent ids).
    assert [i for _, i, _ in streamed] == [json.loads(d.body)["id"] for d in accepted]


def test_node_events_follow_prints_the_timeline_as_it_grows(bf_hooked: Served) -> None:
    with client(bf_hooked.url) as c:
        [uuid] = create_nodes(c, ["followed-1"])
        env = {k: v for k, v in os.environ.items() if not k.startswith("BOOTFORGE_")}
        proc = subprocess.Popen(
            [BOOTFORGE, "node", "events", uuid, "--follow", "--url", bf_hooked.url],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        try:
            assert proc.stdout is not None
            first = proc.stdout.readline()
            assert "created in enroll" in first, first
            act(c, [uuid], "manage")
            lines: list[str] = []
            deadline = time.monotonic() + TRANSITION_TIMEOUT
            # readline blocks; the deadline is enforced by the kill in `finally` if the CLI stalls.
            timer = threading.Timer(TRANSITION_TIMEOUT, proc.kill)
            timer.start()
            try:
                while time.monotonic() < deadline:
                    line = proc.stdout.readline()
                    if not line:
                        break
                    lines.append(line)
                    if "verifying -> manageable" in line:
                        break
            finally:
                timer.cancel()
            text = "".join(lines)
            assert "enroll -> verifying (manage)" in text, text
            assert "verifying -> manageable (done)" in text, text
            assert text.index("enroll -> verifying") < text.index("verifying -> manageable")
        finally:
            proc.kill()
            proc.wait(10)
            if proc.stdout is not None:
                proc.stdout.close()


def test_stream_needs_a_known_node_and_known_types(bf_hooked: Served) -> None:
    with client(bf_hooked.url) as c:
        r = c.get("/v1/events/stream", params={"types": "provision,bogus"})
        assert r.status_code == 400 and "bogus" in r.text
        r = c.get("/v1/nodes/no-such-node/events/stream")
        assert r.status_code == 404


def test_serve_stops_promptly_with_streams_open(bf_hooked: Served) -> None:
    """uvicorn's graceful shutdown waits for every response: open event streams must end by themselves."""
    with client(bf_hooked.url) as c:
        [uuid] = create_nodes(c, ["stream-stop-1"])
    events = SseReader(f"{bf_hooked.url}/v1/events/stream")
    timeline = SseReader(f"{bf_hooked.url}/v1/nodes/{uuid}/events/stream")
    assert events.subscribed.wait(10) and timeline.subscribed.wait(10)
    assert events.error is None and timeline.error is None
    with client(bf_hooked.url) as c:
        assert "\nbootforge_event_stream_clients 2.0\n" in c.get("/metrics").text
    began = time.monotonic()
    bf_hooked.stop()
    assert bf_hooked.proc is not None and bf_hooked.log is not None
    # uvicorn re-raises the SIGTERM it handled once it has shut down; SIGKILL (-9) means it hung.
    assert bf_hooked.proc.returncode in (0, -signal.SIGTERM), bf_hooked.proc.returncode
    assert "Finished server process" in bf_hooked.log.read_text()
    assert time.monotonic() - began < 10
    events.thread.join(10)
    timeline.thread.join(10)
    assert not events.thread.is_alive() and not timeline.thread.is_alive()


def test_undelivered_events_survive_a_restart(bf_hooked: Served, receiver: tuple[Receiver, str]) -> None:
    """The outbox is a table: what a receiver refused before the conductor stopped goes out after it
    starts again, in order."""
    hook, _ = receiver
    hook.fail_first = 10**6  # the receiver is broken until further notice
    with client(bf_hooked.url) as c:
        [uuid] = create_nodes(c, ["restart-1"])
        act(c, [uuid], "manage")
        wait_until(c, [uuid], in_state("manageable"), timeout=TRANSITION_TIMEOUT)
        expected = provision_transitions(history(c, uuid))
    hook.wait_for(lambda got: len(got) >= 1, timeout=TRANSITION_TIMEOUT)
    bf_hooked.stop()
    with hook.changed:
        hook.fail_first = len(hook.got)  # fixed: everything from now on is accepted
    bf_hooked.start()

    def complete(got: list[Delivery]) -> bool:
        return len([d for d in got if d.answered == 204]) >= len(expected)

    got = hook.wait_for(complete, timeout=TRANSITION_TIMEOUT)
    accepted = [json.loads(d.body)["data"] for d in got if d.answered == 204]
    assert [(a["previous_state"], a["provision_state"]) for a in accepted] == expected
    assert all(d.answered == 500 for d in got if d.answered != 204)
