"""The webhook dispatcher against an outbox in SQLite: order per node, bounded retries, bounded outbox."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from sqlalchemy import func, select
from support.service import InProcess, in_process

from bootforge.db.models import EventOutbox
from bootforge.observe.events import Observer, Outbound
from bootforge.observe.webhooks import SIGNATURE_HEADER, TIMESTAMP_HEADER, WebhookDispatcher, sign, verify

SECRET = "unit-test-secret-0123456789"


def settings_for(**events: Any) -> dict[str, Any]:
    return {
        "enabled_hardware_types": ["fake-hardware"],
        "events": {
            "webhooks": [{"name": "t", "url": "http://receiver.test/hook", "secret": SECRET}],
            "backoff_initial": 0.001,
            "backoff_max": 0.002,
            **events,
        },
    }


@pytest.fixture
async def bf(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[InProcess]:
    overrides = dict(getattr(request, "param", {}))
    database = overrides.pop("database_url", {})
    if database == "postgres":
        database = {"database_url": request.getfixturevalue("postgres_fresh_url")}
    async for x in in_process(tmp_path, **database, **settings_for(**overrides)):
        # The conductor's own dispatcher would race the rounds this test drives by hand.
        await x.conductor.observer.stop()
        yield x


def dispatcher(bf: InProcess, answer: Callable[[httpx.Request], int]) -> tuple[WebhookDispatcher, list[Any]]:
    got: list[Any] = []

    def handler(request: httpx.Request) -> httpx.Response:
        event = orjson.loads(request.content)
        status = answer(request)
        got.append((event["subject"], event["data"]["n"], status, request))
        return httpx.Response(status)

    observer: Observer = bf.conductor.observer
    d = WebhookDispatcher(bf.settings, bf.conductor.db, observer.metrics)
    d._client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    return d, got


async def stage(bf: InProcess, events: list[tuple[str, int]]) -> None:
    observer: Observer = bf.conductor.observer
    out = [observer._event("provision", node, {"n": n}) for node, n in events]
    async with bf.conductor.db.write() as s:
        await observer.stage(s, out)
        await s.commit()


async def pending(bf: InProcess) -> int:
    async with bf.conductor.db.read() as s:
        return int(await s.scalar(select(func.count()).select_from(EventOutbox)) or 0)


async def drain(d: WebhookDispatcher, rounds: int = 200) -> None:
    """Run rounds until nothing is left or due; bounded, never a fixed sleep."""
    import asyncio

    for _ in range(rounds):
        pause = await d.round()
        if pause >= 5.0:
            return
        if pause > 0:
            await asyncio.sleep(pause)
    raise AssertionError("the outbox did not drain")


def sample(bf: InProcess, name: str, **labels: str) -> float:
    registry = bf.conductor.observer.metrics.registry
    return registry.get_sample_value(name, labels) or 0.0


@pytest.mark.parametrize(
    "bf", [{}, pytest.param({"database_url": "postgres"}, marks=pytest.mark.postgres)], indirect=True
)
async def test_a_nodes_next_event_waits_for_its_previous_one(bf: InProcess) -> None:
    refused = {"a": 2}  # node a's first event is refused twice; node b is never refused

    def answer(request: httpx.Request) -> int:
        node = orjson.loads(request.content)["subject"]
        if refused.get(node, 0) > 0:
            refused[node] -= 1
            return 503
        return 200

    d, got = dispatcher(bf, answer)
    await stage(bf, [("a", 1), ("b", 1), ("a", 2), ("b", 2), ("a", 3)])
    await drain(d)
    delivered = [(node, n) for node, n, status, _ in got if status == 200]
    assert [n for node, n in delivered if node == "a"] == [1, 2, 3]
    assert [n for node, n in delivered if node == "b"] == [1, 2]
    # b did not wait for a: both of b's events went before a's first was accepted.
    assert delivered.index(("b", 2)) < delivered.index(("a", 1))
    assert [(node, n, status) for node, n, status, _ in got[:1]] == [("a", 1, 503)]
    assert await pending(bf) == 0
    assert sample(bf, "bootforge_webhook_deliveries_total", target="t", outcome="failed") == 2


@pytest.mark.parametrize("bf", [{"max_attempts": 3}], indirect=True)
async def test_an_event_is_given_up_after_max_attempts_and_counted(bf: InProcess) -> None:
    d, got = dispatcher(bf, lambda _r: 500)
    await stage(bf, [("a", 1), ("a", 2)])
    await drain(d)
    assert [(n, status) for _, n, status, _ in got] == [(1, 500)] * 3 + [(2, 500)] * 3
    assert await pending(bf) == 0
    assert sample(bf, "bootforge_webhook_dropped_total", target="t", reason="attempts") == 2


@pytest.mark.parametrize(
    "bf",
    [
        {"max_pending": 10},
        pytest.param({"max_pending": 10, "database_url": "postgres"}, marks=pytest.mark.postgres),
    ],
    indirect=True,
)
async def test_the_outbox_is_bounded_oldest_dropped(bf: InProcess) -> None:
    d, got = dispatcher(bf, lambda _r: 200)
    await stage(bf, [(f"n{i}", i) for i in range(25)])
    await drain(d)
    assert sorted(n for _, n, _, _ in got) == list(range(15, 25))
    assert sample(bf, "bootforge_webhook_dropped_total", target="t", reason="overflow") == 15


async def test_every_post_is_signed_with_its_timestamp(bf: InProcess) -> None:
    d, got = dispatcher(bf, lambda _r: 204)
    await stage(bf, [("a", 1)])
    await drain(d)
    request: httpx.Request = got[0][3]
    stamp = request.headers[TIMESTAMP_HEADER]
    assert verify(SECRET.encode(), stamp, request.content, request.headers[SIGNATURE_HEADER])
    assert not verify(b"another secret", stamp, request.content, request.headers[SIGNATURE_HEADER])
    # A replay with an old timestamp is refused by the receiver's check, even correctly signed.
    old = str(int(stamp) - 3600)
    assert not verify(SECRET.encode(), old, request.content, sign(SECRET.encode(), old, request.content))


def test_event_kinds_of_a_target_filter_what_is_staged() -> None:
    from bootforge.observe.settings import WebhookTarget

    with pytest.raises(ValueError, match="at least 16"):
        WebhookTarget(name="x", url="http://h/", secret="short")
    with pytest.raises(ValueError, match="http"):
        WebhookTarget(name="x", url="ftp://h/", secret=SECRET)
    t = WebhookTarget(name="x", url="http://h/", secret=SECRET, events=["failure"])
    assert SECRET not in repr(t) and SECRET not in str(t.model_dump())


def test_outbound_is_a_cloudevent() -> None:
    e = Outbound(
        "id-1", "failure", "node-1", dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC), "/bootforge/h", {}
    )
    ce = e.cloudevent()
    assert ce["specversion"] == "1.0" and ce["type"] == "io.bootforge.node.failure"
    assert ce["time"] == "2026-01-02T03:04:05Z" and ce["subject"] == "node-1"


async def test_a_slow_stream_client_is_cut_off_with_a_last_message() -> None:
    from bootforge.observe.events import EventHub
    from bootforge.observe.metrics import Metrics
    from bootforge.observe.streams import cloudevents

    metrics = Metrics()
    hub = EventHub(metrics, queue_size=10)
    with hub.subscribe(None, ["provision"]) as sub:
        stream = cloudevents(sub, keepalive=5.0, stopping=lambda: False)
        assert await anext(stream) == b": subscribed\n\n"
        observer_events = [
            Outbound(str(i), "provision", "n", dt.datetime.now(dt.UTC), "/bootforge/h", {}) for i in range(25)
        ]
        hub.publish(observer_events)
        got = [chunk async for chunk in stream]
    assert len(got) == 11 and b"event: overflow" in got[-1]
    assert metrics.registry.get_sample_value("bootforge_event_stream_overflows_total") == 1
    assert not hub.subscribers
