"""Power-state sync at fleet scale, in-process on SQLite and PostgreSQL: workers, timeouts, maintenance.

A test-only hardware type stands in for the BMCs: what each node's "BMC" answers is set per node
name in `Bmcs`, and can be a power state, a failure, or a hang (a read that never returns, as a
BMC that accepts the connection and never answers). Reads are counted while in flight.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select, update
from support.service import InProcess, in_process

from bootforge.conductor import states
from bootforge.conductor.conductor import POWER_FAILURE, PowerSyncRound
from bootforge.db.models import Node, NodeEvent
from bootforge.drivers import base, fake, hardware
from bootforge.drivers.base import Task
from bootforge.errors import DriverError

TEST_TYPE = "sync-test-hardware"
HANG = "hang"
FAIL = "fail"


@dataclass
class Bmcs:
    """The answers of every test BMC, and what the reads did."""

    answer: dict[str, str] = field(default_factory=dict)
    # Seconds a read takes before it answers (a BMC's latency).
    latency: float = 0.0
    in_flight: int = 0
    max_in_flight: int = 0
    reads: dict[str, int] = field(default_factory=dict)
    # Loop time at which each good read answered, and at which each hung read was given up.
    answered_at: list[float] = field(default_factory=list)
    abandoned_at: list[float] = field(default_factory=list)

    def forget(self) -> None:
        """Drop what earlier reads did (those of enrolment, say)."""
        self.max_in_flight = 0
        self.reads.clear()
        self.answered_at.clear()
        self.abandoned_at.clear()


class SyncPower(fake.FakePower):
    bmcs: Bmcs

    async def get_power_state(self, task: Task) -> str:
        bmcs = self.bmcs
        name = str(task.node.name)
        answer = bmcs.answer.get(name, base.POWER_OFF)
        bmcs.reads[name] = bmcs.reads.get(name, 0) + 1
        bmcs.in_flight += 1
        bmcs.max_in_flight = max(bmcs.max_in_flight, bmcs.in_flight)
        loop = asyncio.get_running_loop()
        try:
            if answer == HANG:
                try:
                    await asyncio.Event().wait()  # never set: only the conductor's timeout ends this
                finally:
                    bmcs.abandoned_at.append(loop.time())
            if bmcs.latency:
                await asyncio.sleep(bmcs.latency)
            if answer == FAIL:
                raise DriverError(f"BMC of {name} at 192.0.2.1: connection refused")
            bmcs.answered_at.append(loop.time())
            return answer
        finally:
            bmcs.in_flight -= 1


@pytest.fixture
def bmcs() -> Bmcs:
    return Bmcs()


def _hardware(bmcs: Bmcs) -> hardware.HardwareType:
    hw = hardware.HARDWARE_TYPES["fake-hardware"]()
    interfaces = dict(hw.interfaces)

    def power(s: Any) -> SyncPower:
        p = SyncPower(s.fake_delays)
        p.bmcs = bmcs
        return p

    interfaces["power"] = [("fake", power)]
    return hardware.HardwareType(TEST_TYPE, "test only: BMCs that answer, fail or hang", interfaces)


async def _bf(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bmcs: Bmcs, **overrides: Any
) -> AsyncIterator[InProcess]:
    """SQLite, unless overrides carry a database_url."""
    monkeypatch.setitem(hardware.HARDWARE_TYPES, TEST_TYPE, lambda: _hardware(bmcs))
    overrides.setdefault("enabled_hardware_types", ["fake-hardware", TEST_TYPE])
    async for x in in_process(tmp_path, **overrides):
        yield x


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
async def bf(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bmcs: Bmcs
) -> AsyncIterator[InProcess]:
    """Rounds run when the test calls them; a hung read is given up after 0.5 s."""
    overrides: dict[str, Any] = {"power_sync_timeout": 0.5, "power_sync_workers": 8}
    if request.param == "postgresql":
        overrides["database_url"] = request.getfixturevalue("postgres_fresh_url")
    async for x in _bf(tmp_path, monkeypatch, bmcs, **overrides):
        yield x


async def enrol(bf: InProcess, bmcs: Bmcs, *names: str) -> None:
    """Nodes in manageable: their BMCs must answer for that (the manage verb reads the power)."""
    for name in names:
        r = await bf.client.post("/v1/nodes", json={"driver": TEST_TYPE, "name": name})
        assert r.status_code == 201, r.text
        r = await bf.client.put(f"/v1/nodes/{name}/states/provision", json={"target": "manage"})
        assert r.status_code == 202, r.text
    await bf.conductor.wait_idle()
    for name in names:
        assert (await node(bf.client, name))["provision_state"] == states.MANAGEABLE
    bmcs.forget()


async def node(c: httpx.AsyncClient, ident: str) -> dict[str, Any]:
    r = await c.get(f"/v1/nodes/{ident}")
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


async def timeline(bf: InProcess, name: str) -> list[NodeEvent]:
    async with bf.conductor.db.read() as s:
        node_id = await s.scalar(select(Node.id).where(Node.name == name))
        return list((await s.scalars(select(NodeEvent).where(NodeEvent.node_id == node_id))).all())


async def sync(bf: InProcess) -> PowerSyncRound:
    # Bounded, so that a round the timeout does not end fails the test instead of hanging it.
    async with asyncio.timeout(20):
        result: PowerSyncRound = await bf.conductor.sync_power_states()
    return result


async def test_hung_bmcs_delay_nobody_but_themselves(bf: InProcess, bmcs: Bmcs) -> None:
    good = [f"good{i}" for i in range(30)]
    hung = [f"hung{i}" for i in range(3)]
    await enrol(bf, bmcs, *good, *hung)
    for name in hung:
        bmcs.answer[name] = HANG
    for name in good[:10]:
        bmcs.answer[name] = base.POWER_ON  # someone powered these on behind bootforge's back
    bmcs.latency = 0.01

    result = await sync(bf)

    assert (result.nodes, result.failed, result.timed_out, result.changed) == (33, 3, 3, 10)
    assert len(result.latencies) == 30
    # Every good read answered before the first hung one was given up: 3 hung reads held 3 of the
    # 8 workers for the whole timeout, the other 5 went through the 30 good nodes meanwhile.
    assert len(bmcs.answered_at) == 30 and len(bmcs.abandoned_at) == 3
    assert max(bmcs.answered_at) < min(bmcs.abandoned_at)
    # ... and the round ends with the timeout, not a multiple of it.
    assert result.seconds < 2 * bf.settings.power_sync_timeout
    for name in good[:10]:
        assert (await node(bf.client, name))["power_state"] == base.POWER_ON
    for name in good[10:]:
        assert (await node(bf.client, name))["power_state"] == base.POWER_OFF
    # A timeout counts as a failure like any other; one is not enough for maintenance.
    assert (await node(bf.client, hung[0]))["maintenance"] is False


async def test_workers_setting_bounds_reads_in_flight(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bmcs: Bmcs
) -> None:
    async for bf in _bf(tmp_path, monkeypatch, bmcs, power_sync_workers=3):
        names = [f"n{i}" for i in range(12)]
        await enrol(bf, bmcs, *names)
        bmcs.latency = 0.02
        result = await sync(bf)
        assert result.failed == 0 and len(result.latencies) == 12
        assert bmcs.max_in_flight == 3


async def test_rounds_never_overlap(bf: InProcess, bmcs: Bmcs) -> None:
    names = [f"n{i}" for i in range(20)]
    await enrol(bf, bmcs, *names)
    bmcs.latency = 0.02
    # Two callers at once (the periodic and an operator's trigger, say): the second round waits.
    first, second = await asyncio.gather(sync(bf), sync(bf))
    assert bmcs.max_in_flight == bf.settings.power_sync_workers
    assert all(bmcs.reads[n] == 2 for n in names)
    assert first.nodes == second.nodes == 20


async def test_three_failures_put_the_node_in_maintenance_and_an_answer_lifts_it(
    bf: InProcess, bmcs: Bmcs
) -> None:
    await enrol(bf, bmcs, "flaky", "steady")
    bmcs.answer["flaky"] = FAIL
    for _ in range(2):
        await sync(bf)
        assert (await node(bf.client, "flaky"))["maintenance"] is False
    # A good read in between starts the count again.
    bmcs.answer["flaky"] = base.POWER_OFF
    await sync(bf)
    bmcs.answer["flaky"] = FAIL
    for _ in range(2):
        await sync(bf)
    assert (await node(bf.client, "flaky"))["maintenance"] is False
    bmcs.answer["flaky"] = HANG  # the third in a row may be of another kind
    result = await sync(bf)
    assert result.to_maintenance == 1

    n = await node(bf.client, "flaky")
    assert (n["maintenance"], n["fault"]) == (True, POWER_FAILURE)
    assert n["maintenance_reason"].startswith("power state could not be read 3 times in a row: ")
    assert "did not answer within 0.5 s" in n["maintenance_reason"]
    set_events = [e for e in await timeline(bf, "flaky") if e.event_type == "maintenance"]
    assert [e.severity for e in set_events] == ["error"]
    assert set_events[0].event.startswith("maintenance set: power state could not be read 3 times")
    assert (await node(bf.client, "steady"))["maintenance"] is False

    # Still read every round while in that maintenance; failures add nothing to its timeline.
    reads = bmcs.reads["flaky"]
    count = len(await timeline(bf, "flaky"))
    await sync(bf)
    assert bmcs.reads["flaky"] == reads + 1
    assert len(await timeline(bf, "flaky")) == count

    # The BMC answers again (and the machine was powered on meanwhile): maintenance is lifted.
    bmcs.answer["flaky"] = base.POWER_ON
    result = await sync(bf)
    assert (result.lifted, result.changed) == (1, 1)
    n = await node(bf.client, "flaky")
    assert (n["maintenance"], n["fault"], n["maintenance_reason"]) == (False, None, None)
    assert n["power_state"] == base.POWER_ON
    texts = [e.event for e in await timeline(bf, "flaky")]
    assert "maintenance unset: the BMC answers again (power on)" in texts
    assert "power state changed outside bootforge: power off -> power on" in texts


async def test_maintenance_set_by_an_operator_is_left_alone(bf: InProcess, bmcs: Bmcs) -> None:
    await enrol(bf, bmcs, "mine", "theirs")
    bmcs.answer["mine"] = bmcs.answer["theirs"] = FAIL
    for _ in range(3):
        await sync(bf)
    # The operator takes over the maintenance bootforge set on "theirs", with a reason of their own.
    r = await bf.client.put("/v1/nodes/theirs/maintenance", json={"reason": "replacing the BMC"})
    assert r.status_code == 202, r.text
    # ... and puts a third node in maintenance by hand.
    await enrol(bf, bmcs, "manual")
    r = await bf.client.put("/v1/nodes/manual/maintenance", json={"reason": "noisy fan"})
    assert r.status_code == 202, r.text
    bmcs.answer["mine"] = bmcs.answer["theirs"] = base.POWER_OFF
    await sync(bf)
    assert (await node(bf.client, "mine"))["maintenance"] is False
    theirs = await node(bf.client, "theirs")
    assert (theirs["maintenance"], theirs["maintenance_reason"]) == (True, "replacing the BMC")
    assert "manual" not in bmcs.reads  # not read at all (enrolment's read was forgotten)


async def test_locked_node_is_skipped_and_a_deleted_node_forgotten(bf: InProcess, bmcs: Bmcs) -> None:
    await enrol(bf, bmcs, "busy", "gone")
    bmcs.answer["gone"] = FAIL
    await sync(bf)
    async with bf.conductor.db.write() as s:
        await s.execute(update(Node).where(Node.name == "busy").values(reservation="another-conductor"))
        await s.commit()
    r = await bf.client.delete("/v1/nodes/gone")
    assert r.status_code == 204, r.text
    bmcs.forget()
    result = await sync(bf)
    assert result.nodes == 0
    assert bmcs.reads == {}
    assert bf.conductor._power_failures == {}


async def test_the_periodic_round_notices_a_change_by_itself(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bmcs: Bmcs
) -> None:
    async for bf in _bf(tmp_path, monkeypatch, bmcs, power_sync_interval=0.1):
        await enrol(bf, bmcs, "drifter")
        bmcs.answer["drifter"] = base.POWER_ON
        deadline = asyncio.get_running_loop().time() + 10
        while (await node(bf.client, "drifter"))["power_state"] != base.POWER_ON:
            assert asyncio.get_running_loop().time() < deadline, "no round noticed the change in 10 s"
            await asyncio.sleep(0.05)
