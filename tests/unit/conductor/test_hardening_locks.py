"""Issue #11 finding 3: a node's lock is given back on every exit path of the work that holds it.

Each failure here is one a bug can cause (a change the database refuses, an exception the work did
not expect, work that forgets to release): before the fix, each left the node answering 409
"locked by host" until the conductor restarted.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from support.service import InProcess

from bootforge.conductor.task import NodeTask, acquire, load_node, reserve


async def new_node(bf: InProcess, **body: Any) -> str:
    r = await bf.client.post("/v1/nodes", json={"driver": "fake-hardware", **body})
    assert r.status_code == 201, r.text
    return str(r.json()["uuid"])


async def locked_task(bf: InProcess, uuid: str) -> NodeTask:
    node = await load_node(bf.conductor, uuid)
    await reserve(bf.conductor, node)
    task = NodeTask(bf.conductor, node, None, "test")
    assert task.exclusive
    return task


async def test_acquire_unlocks_when_saving_the_changes_fails(bf: InProcess) -> None:
    uuid = await new_node(bf)
    with pytest.raises(Exception, match="NOT NULL"):
        async with acquire(bf.conductor, uuid, "test") as task:
            task.node.driver = None  # the database refuses this row on release
    assert (await load_node(bf.conductor, uuid)).reservation is None


async def test_acquire_unlocks_when_its_body_raises(bf: InProcess) -> None:
    uuid = await new_node(bf)
    with pytest.raises(RuntimeError):
        async with acquire(bf.conductor, uuid, "test") as task:
            task.node.driver = None
            raise RuntimeError("a bug")
    node = await load_node(bf.conductor, uuid)
    assert node.reservation is None and node.driver == "fake-hardware"


async def test_work_that_raises_and_cannot_be_saved_is_failed_and_unlocked(bf: InProcess) -> None:
    uuid = await new_node(bf)
    task = await locked_task(bf, uuid)

    async def broken(task: NodeTask) -> None:
        task.node.driver = None  # every later save of this object fails
        raise RuntimeError("boom")

    bf.conductor.spawn(task, broken)
    await bf.conductor.wait_idle()
    node = await load_node(bf.conductor, uuid)
    assert node.reservation is None
    assert node.driver == "fake-hardware"
    assert node.last_error is not None and "boom" in node.last_error
    r = await bf.client.get(f"/v1/nodes/{uuid}/history", params={"detail": "true"})
    assert any("boom" in e["event"] for e in r.json()["history"])


async def test_work_that_forgets_to_release_is_unlocked_by_the_runner(bf: InProcess) -> None:
    uuid = await new_node(bf)
    task = await locked_task(bf, uuid)

    async def forgetful(task: NodeTask) -> None:
        await task.record("test", "did its job, kept the lock")

    bf.conductor.spawn(task, forgetful)
    await bf.conductor.wait_idle()
    assert (await load_node(bf.conductor, uuid)).reservation is None


async def test_work_spawned_by_a_verb_that_forgets_to_release_is_unlocked(bf: InProcess) -> None:
    """The provisioning verbs make the task before they take the lock, as here."""
    uuid = await new_node(bf)
    node = await load_node(bf.conductor, uuid)
    task = NodeTask(bf.conductor, node, None, "test")
    await reserve(bf.conductor, node)

    async def forgetful(task: NodeTask) -> None:
        await task.record("test", "did its job, kept the lock")

    bf.conductor.spawn(task, forgetful)
    await bf.conductor.wait_idle()
    assert (await load_node(bf.conductor, uuid)).reservation is None


async def test_work_handed_to_the_next_job_keeps_the_lock_until_that_job_ends(bf: InProcess) -> None:
    uuid = await new_node(bf)
    task = await locked_task(bf, uuid)
    go = asyncio.Event()
    running = asyncio.Event()

    async def second(task: NodeTask) -> None:
        running.set()
        await go.wait()
        await task.release()

    async def first(task: NodeTask) -> None:
        bf.conductor.spawn(task, second)

    bf.conductor.spawn(task, first)
    await running.wait()
    # `first` has ended; the lock now belongs to `second`.
    await asyncio.sleep(0)
    assert (await load_node(bf.conductor, uuid)).reservation == bf.conductor.host
    go.set()
    await bf.conductor.wait_idle()
    assert (await load_node(bf.conductor, uuid)).reservation is None


async def test_work_cancelled_by_a_stopping_conductor_keeps_its_lock_for_recovery(bf: InProcess) -> None:
    uuid = await new_node(bf)
    task = await locked_task(bf, uuid)
    started = asyncio.Event()

    async def endless(task: NodeTask) -> None:
        started.set()
        await asyncio.Event().wait()

    bf.conductor.spawn(task, endless)
    await started.wait()
    await bf.conductor.stop(grace=0.01)
    assert (await load_node(bf.conductor, uuid)).reservation == bf.conductor.host
