"""Fencing of the node lock: a conductor that stalled and was taken over cannot write to the node.

Every reserve (a takeover too) bumps the node's lock_generation; the holder's writes are conditioned on
`reservation = me AND lock_generation = mine` and raise LockLost when they match nothing. Liveness is
judged by the database's clock, so a conductor's own clock being off neither kills nor saves it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import signal
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update
from support.lifecycle import act, client, create_nodes, history, in_state, nodes, wait_until
from support.service import InProcess, Served, in_process, served

from bootforge.conductor import conductor as conductor_module
from bootforge.conductor import states
from bootforge.conductor.conductor import Conductor
from bootforge.conductor.task import LockLost, NodeTask, give_back, load_node, reserve
from bootforge.db.clock import db_now
from bootforge.db.models import Conductor as ConductorRow
from bootforge.db.models import Node, NodeEvent

A = "test-conductor"  # the in-process conductor's name (support.service.in_process)
B = "conductor-b"
OFFLINE_AFTER = 5.0


async def _enrolled(bf: InProcess) -> Node:
    r = await bf.client.post("/v1/nodes", json={"driver": "fake-hardware", "name": "fenced"})
    assert r.status_code == 201, r.text
    return await load_node(bf.conductor, "fenced")


async def _age_heartbeat(bf: InProcess, host: str) -> None:
    """Make `host` look dead by the database's clock: its heartbeat older than conductor_offline_after."""
    async with bf.conductor.db.write() as s:
        await s.execute(
            update(ConductorRow)
            .where(ConductorRow.hostname == host)
            .values(heartbeat_at=db_now(OFFLINE_AFTER + 30))
        )
        await s.commit()


async def _peer(bf: InProcess) -> Conductor:
    peer = Conductor(bf.settings.model_copy(update={"host": B}), bf.conductor.db)
    await peer._register()
    return peer


async def _late_writes_are_refused(bf: InProcess) -> None:
    a = bf.conductor
    node = await _enrolled(bf)
    await reserve(a, node)
    stalled = NodeTask(a, node, None, "stalled work")
    first = node.lock_generation

    # A stalls; the database's clock says its heartbeat is too old; B takes the node over.
    await _age_heartbeat(bf, A)
    b = await _peer(bf)
    assert A not in await b.live_hosts()
    taken = await load_node(a, "fenced")
    assert await b._claim(taken, A)
    assert taken.lock_generation == first + 1
    work_b = NodeTask(b, taken, None, "taken over")
    work_b.node.extra = {"by": B}
    await work_b.record("test", "B's write")
    await work_b.save()

    # A wakes up and goes on as if it still held the lock: every write is refused, none applied.
    stalled.node.extra = {"by": A}
    await stalled.record("test", "A's late event")
    with pytest.raises(LockLost):
        await stalled.save()
    with pytest.raises(LockLost):
        await stalled.transition("manage")
    with pytest.raises(LockLost):
        await stalled.release()
    await give_back(stalled)  # cleaning up after the failure must not unlock B's node either

    async with a.db.read() as s:
        row = await s.scalar(select(Node).where(Node.name == "fenced"))
        events = list((await s.scalars(select(NodeEvent).where(NodeEvent.node_id == node.id))).all())
    assert row is not None
    assert (row.reservation, row.lock_generation) == (B, first + 1)
    assert row.provision_state == states.ENROLL
    assert row.extra == {"by": B}
    assert [e.event for e in events if e.conductor == A] == ["created in enroll"]  # from before
    assert [e.event for e in events if e.conductor == B] == ["B's write"]

    # B, the holder, finishes normally.
    await work_b.transition("manage", release=True)
    async with a.db.read() as s:
        row = await s.scalar(select(Node).where(Node.name == "fenced"))
    assert row is not None and row.reservation is None and row.provision_state != states.ENROLL


@pytest.fixture
async def bf_fenced(tmp_path: Path) -> AsyncIterator[InProcess]:
    async for x in in_process(tmp_path, conductor_offline_after=OFFLINE_AFTER):
        yield x


async def test_a_taken_over_conductors_late_writes_are_refused_sqlite(bf_fenced: InProcess) -> None:
    await _late_writes_are_refused(bf_fenced)


@pytest.mark.postgres
async def test_a_taken_over_conductors_late_writes_are_refused_postgres(
    tmp_path: Path, postgres_fresh_url: str
) -> None:
    async for bf in in_process(
        tmp_path, database_url=postgres_fresh_url, conductor_offline_after=OFFLINE_AFTER
    ):
        await _late_writes_are_refused(bf)


async def test_a_restart_under_the_same_name_fences_the_old_process(bf_fenced: InProcess) -> None:
    """The name alone cannot tell a stalled process from its restarted self: the generation does."""
    a = bf_fenced.conductor
    node = await _enrolled(bf_fenced)
    await reserve(a, node)
    stalled = NodeTask(a, node, None, "stalled work")
    again = Conductor(bf_fenced.settings, a.db)
    taken = await load_node(a, "fenced")
    assert await again._claim(taken, A)
    stalled.node.extra = {"by": "the old process"}
    with pytest.raises(LockLost):
        await stalled.save()
    async with a.db.read() as s:
        row = await s.scalar(select(Node).where(Node.name == "fenced"))
    assert row is not None and row.extra == {} and row.reservation == A


async def test_liveness_is_judged_by_the_database_clock(
    bf_fenced: InProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A conductor whose clock is an hour behind heartbeats; a peer does not take its node."""
    a = bf_fenced.conductor
    node = await _enrolled(bf_fenced)
    await reserve(a, node)
    behind = dt.timedelta(hours=1)
    real = conductor_module.utcnow
    monkeypatch.setattr(conductor_module, "utcnow", lambda: real() - behind)
    await a._heartbeat()
    monkeypatch.setattr(conductor_module, "utcnow", lambda: real() + behind)
    b = await _peer(bf_fenced)
    assert set(await b.live_hosts()) == {A, B}
    assert not await b._claim(await load_node(a, "fenced"), A)
    # And the other way: a dead conductor is dead however far ahead its own clock runs.
    await _age_heartbeat(bf_fenced, A)
    assert await b.live_hosts() == [B]


# --- a real `bootforge serve` stopped with SIGSTOP on PostgreSQL ----------------------------------

CLUSTER_ENV = {
    "BOOTFORGE_CONDUCTOR_HEARTBEAT_INTERVAL": "0.5",
    "BOOTFORGE_CONDUCTOR_OFFLINE_AFTER": "3",
    "BOOTFORGE_TIMEOUT_CHECK_INTERVAL": "0.5",
    "BOOTFORGE_POWER_SYNC_INTERVAL": "0",
    # Long enough that all three deploys are seen in their step at once on a loaded machine.
    "BOOTFORGE_FAKE_DELAYS__DEPLOY": "15",
    "BOOTFORGE_FAKE_DELAYS__CLEAN": "0.2",
}


@contextlib.contextmanager
def _conductor(tmp_path: Path, name: str, database_url: str) -> Iterator[Served]:
    home = tmp_path / name
    home.mkdir()
    env = {**CLUSTER_ENV, "BOOTFORGE_SECRET_KEY_FILE": str(tmp_path / "secret.key")}
    yield from served(home, env=env, args=["--host", name, "--database-url", database_url])


def _wait_for_log(srv: Served, needles: list[str], timeout: float) -> None:
    assert srv.log is not None
    deadline = time.monotonic() + timeout
    while True:
        text = srv.log.read_text(errors="replace")
        missing = [n for n in needles if n not in text]
        if not missing:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"not in {srv.log} after {timeout}s: {missing}")
        time.sleep(0.2)


def _ids(events: list[dict[str, Any]], host: str) -> set[str]:
    return {e["uuid"] for e in events if e["conductor"] == host}


@pytest.mark.postgres
@pytest.mark.slow
@pytest.mark.filterwarnings(r"ignore:Exception ignored in. <_io.FileIO name='.*/serve-\d+\.log'")
def test_a_sigstopped_conductor_writes_nothing_after_its_takeover(
    tmp_path: Path, postgres_fresh_url: str
) -> None:
    with (
        _conductor(tmp_path, "conductor-a", postgres_fresh_url) as a,
        _conductor(tmp_path, "conductor-b", postgres_fresh_url) as b,
        client(a.url) as ca,
        client(b.url) as cb,
    ):
        assert a.proc is not None
        # 24 nodes: the ring gives conductor-a fewer than 3 of them with a chance under 0.1 % even at
        # a 40 % share of the ring (with 12 nodes it was 2-8 %, and a CI run drew 2).
        fleet = create_nodes(ca, [f"f-{i}" for i in range(24)])
        act(ca, fleet, "manage")
        wait_until(cb, fleet, in_state(states.MANAGEABLE))
        act(ca, fleet, "provide")
        wait_until(cb, fleet, in_state(states.AVAILABLE))
        # Nodes whose owner on the hash ring is conductor-a (it runs their work, whoever is asked),
        # chosen only now: right after start-up a process's view of the ring may not have the other
        # conductor yet (it is re-read at most once a second), and a node it counted as its own moves
        # when the other joins. Both processes must agree.
        seen_by_a, seen_by_b = nodes(ca, fleet), nodes(cb, fleet)
        ours = [u for u in fleet if seen_by_a[u]["conductor"] == seen_by_b[u]["conductor"] == "conductor-a"]
        doomed = ours[:3]
        assert len(doomed) == 3, seen_by_a
        act(ca, doomed, "active")
        wait_until(
            cb,
            doomed,
            lambda n: n["deploy_step"].get("step") == "deploy" and n["reservation"] == "conductor-a",
            what="in conductor-a's deploy step",
        )
        a.proc.send_signal(signal.SIGSTOP)
        try:
            wait_until(cb, doomed, lambda n: n["reservation"] == "conductor-b", timeout=30, what="taken over")
            before = {u: _ids(history(cb, u), "conductor-a") for u in doomed}
        finally:
            a.proc.send_signal(signal.SIGCONT)
        # conductor-a wakes in the middle of each deploy and tries to go on: each write is refused.
        _wait_for_log(a, [f"node {u}: lock generation" for u in doomed], timeout=30)
        final = wait_until(cb, doomed, in_state(states.ACTIVE), timeout=40, what="active")
        assert {n["provision_state"] for n in nodes(cb, doomed).values()} == {states.ACTIVE}
        for u in doomed:
            events = history(cb, u)
            # Nothing conductor-a recorded reached the timeline after the takeover.
            assert _ids(events, "conductor-a") == before[u], u
            assert any("taken over by conductor-b" in e["event"] for e in events)
            assert final[u]["last_error"] is None
