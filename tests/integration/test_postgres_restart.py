"""The database as the engine: conductors survive a PostgreSQL restart or failover mid-work.

Two real `bootforge serve` processes share a PostgreSQL server that this test starts. While every
node is in its deploy step, the server is shut down (fast: it terminates every client connection, as
a restart or a failover does), kept down longer than the deploy step lasts, and started again on the
same port. The work that hit the dead database is not failed: each conductor keeps the node's lock,
waits until the database answers, and resumes the node from its last persisted step. Every node
reaches `active`, no lock is left behind, both processes are still running, and the API answers again.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.chaos import (
    failover_url,
    pg_conductor,
    promote,
    restart_postgres,
    start_postgres,
    stop_postgres,
    streaming_standby,
)
from support.lifecycle import act, client, create_nodes, history, in_state, wait_until
from support.postgres import PostgresServer, running_postgres

from bootforge.conductor import states

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.slow,
    pytest.mark.filterwarnings(r"ignore:Exception ignored in. <_io.FileIO name='.*/serve-\d+\.log'"),
]

ENV = {
    "BOOTFORGE_CONDUCTOR_HEARTBEAT_INTERVAL": "0.5",
    # Longer than the outage: the conductors must resume their own work, not take each other's over.
    "BOOTFORGE_CONDUCTOR_OFFLINE_AFTER": "20",
    "BOOTFORGE_TIMEOUT_CHECK_INTERVAL": "0.5",
    "BOOTFORGE_POWER_SYNC_INTERVAL": "0",
    # Long enough that the first node to enter its deploy step is still in it when the server is
    # down: the 16 deploy requests and the test's polls spread the entries over several seconds on a
    # loaded machine (with 6 s, one node of 16 once finished its step before the server stopped).
    "BOOTFORGE_FAKE_DELAYS__DEPLOY": "12",
}
NODES = 16
DOWN_FOR = 13.0  # longer than the deploy step: every node's next write finds the database gone


@pytest.fixture
def own_postgres() -> Iterator[PostgresServer]:
    """A server of this test's own: restarting the session's shared one would break other tests."""
    try:
        with running_postgres() as pg:
            # Room for two conductors' pools (max_connections defaults to 100).
            stop_postgres(pg)
            start_postgres(pg)
            yield pg
    except LookupError as exc:
        pytest.skip(f"needs {exc}")


def texts(events: list[dict[str, Any]]) -> list[str]:
    return [e["event"] for e in events]


def test_conductors_resume_their_work_after_postgresql_restarts(
    tmp_path: Path, own_postgres: PostgresServer
) -> None:
    url = own_postgres.url()
    with (
        pg_conductor(tmp_path, "restart-a", url, ENV) as a,
        pg_conductor(tmp_path, "restart-b", url, ENV) as b,
        client(a.url) as ca,
        client(b.url) as cb,
    ):
        uuids = create_nodes(ca, [f"pg-restart-{i}" for i in range(NODES)])
        act(ca, uuids, "manage")
        wait_until(ca, uuids, in_state(states.MANAGEABLE))
        act(cb, uuids, "provide")
        wait_until(ca, uuids, in_state(states.AVAILABLE))
        act(ca, uuids[::2], "active")
        act(cb, uuids[1::2], "active")
        in_step = wait_until(
            ca, uuids, lambda n: n["deploy_step"].get("step") == "deploy", what="in the deploy step"
        )
        holders = {n["reservation"] for n in in_step.values()}

        down = restart_postgres(own_postgres, DOWN_FOR)

        final = wait_until(cb, uuids, in_state(states.ACTIVE), timeout=60, what="active after the restart")
        assert all(n["last_error"] is None for n in final.values()), final
        for proc in (a, b):
            assert proc.proc is not None and proc.proc.poll() is None, f"{proc.log} exited"
        lost = []
        for u in uuids:
            events = texts(history(ca, u))
            assert events.count("deploying -> active (done)") == 1, events
            lost += [e for e in events if e.startswith("database connection lost during deploy on")]
        # Every node was in its deploy step when the server went away, for longer than the step:
        # the work of each one hit the dead database and was resumed by its own conductor.
        assert len(lost) == NODES, (down, holders, lost)
        assert {e.split(" on ")[1].split(":")[0] for e in lost} <= holders

        # Nothing was lost: the nodes work as before (undeploy through the other process).
        act(cb, uuids, "undeploy")
        wait_until(ca, uuids, in_state(states.AVAILABLE), timeout=60)


def test_conductors_follow_a_failover_to_the_promoted_standby(
    tmp_path: Path, own_postgres: PostgresServer
) -> None:
    """A primary and a streaming standby (pg_basebackup -R), the conductors on the multi-host URL with
    target_session_attrs=read-write. Mid-deploy the primary stops and the standby is promoted (what
    Patroni does, by hand): the conductors' new connections find the promoted server, the interrupted
    work resumes there, and every node reaches `active`."""
    with streaming_standby(own_postgres) as standby:
        url = failover_url(own_postgres, standby)
        with (
            pg_conductor(tmp_path, "failover-a", url, ENV) as a,
            pg_conductor(tmp_path, "failover-b", url, ENV) as b,
            client(a.url) as ca,
            client(b.url) as cb,
        ):
            uuids = create_nodes(ca, [f"pg-failover-{i}" for i in range(NODES)])
            act(ca, uuids, "manage")
            wait_until(ca, uuids, in_state(states.MANAGEABLE))
            act(cb, uuids, "provide")
            wait_until(ca, uuids, in_state(states.AVAILABLE))
            act(ca, uuids, "active")
            wait_until(
                ca, uuids, lambda n: n["deploy_step"].get("step") == "deploy", what="in the deploy step"
            )

            stop_postgres(own_postgres)
            # A failover manager takes a while to decide (Patroni: its TTL); meanwhile the standby
            # answers but is read-only, so the URL's read-write requirement refuses it.
            time.sleep(DOWN_FOR)  # the length of the outage is the scenario, not a wait for something
            promote(standby)

            final = wait_until(
                cb, uuids, in_state(states.ACTIVE), timeout=60, what="active after the failover"
            )
            assert all(n["last_error"] is None for n in final.values()), final
            for proc in (a, b):
                assert proc.proc is not None and proc.proc.poll() is None, f"{proc.log} exited"
            resumed = sum(
                e.startswith("database connection lost during deploy on")
                for u in uuids
                for e in texts(history(ca, u))
            )
            assert resumed == NODES
            assert not (own_postgres.datadir / "postmaster.pid").exists(), "the old primary is down"
            act(cb, uuids, "undeploy")
            wait_until(ca, uuids, in_state(states.AVAILABLE), timeout=60)
