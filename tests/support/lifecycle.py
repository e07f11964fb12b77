"""Driving fake nodes through a real `bootforge serve` over HTTP, and reading what a crash left behind."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import httpx

from bootforge.conductor import states

LATEST = {"X-OpenStack-Ironic-API-Version": "1.78"}
SETTLED = states.STABLE_STATES | states.FAILED_STATES


def client(url: str) -> httpx.Client:
    return httpx.Client(base_url=url, headers=LATEST, timeout=30)


def create_nodes(c: httpx.Client, names: Iterable[str], **fields: Any) -> list[str]:
    uuids = []
    for name in names:
        r = c.post("/v1/nodes", json={"driver": "fake-hardware", "name": name, **fields})
        assert r.status_code == 201, r.text
        uuids.append(r.json()["uuid"])
    return uuids


def act(c: httpx.Client, uuids: Iterable[str], verb: str) -> None:
    for u in uuids:
        r = c.put(f"/v1/nodes/{u}/states/provision", json={"target": verb})
        assert r.status_code == 202, f"{verb} on {u}: {r.status_code} {r.text}"


def power(c: httpx.Client, uuids: Iterable[str], target: str) -> None:
    for u in uuids:
        r = c.put(f"/v1/nodes/{u}/states/power", json={"target": target})
        assert r.status_code == 202, f"power {target} on {u}: {r.status_code} {r.text}"


def nodes(c: httpx.Client, uuids: Iterable[str]) -> dict[str, dict[str, Any]]:
    wanted = set(uuids)
    r = c.get("/v1/nodes/detail")
    assert r.status_code == 200, r.text
    return {n["uuid"]: n for n in r.json()["nodes"] if n["uuid"] in wanted}


def wait_until(
    c: httpx.Client,
    uuids: list[str],
    done: Callable[[dict[str, Any]], bool],
    timeout: float = 45,
    what: str = "the expected state",
) -> dict[str, dict[str, Any]]:
    """Poll until `done(node)` holds for every node; fail naming the nodes that did not get there."""
    deadline = time.monotonic() + timeout
    while True:
        found = nodes(c, uuids)
        late = {u: (n["provision_state"], n["reservation"]) for u, n in found.items() if not done(n)}
        if not late and len(found) == len(uuids):
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"not {what} after {timeout}s: {late}")
        time.sleep(0.2)


def in_state(*wanted: str) -> Callable[[dict[str, Any]], bool]:
    return lambda n: n["provision_state"] in wanted and n["reservation"] is None


def settled(n: dict[str, Any]) -> bool:
    """Nothing is happening to the node: a stable or failed state, no lock, no pending power action."""
    return n["provision_state"] in SETTLED and n["reservation"] is None and n["target_power_state"] is None


def history(c: httpx.Client, uuid: str) -> list[dict[str, Any]]:
    r = c.get(f"/v1/nodes/{uuid}/history", params={"detail": "true"})
    assert r.status_code == 200, r.text
    events: list[dict[str, Any]] = r.json()["history"]
    return events


def snapshot(db_file: Path) -> dict[str, dict[str, Any]]:
    """The node rows as a killed process left them in its SQLite file (read only)."""
    conn = sqlite3.connect(f"file:{db_file}?mode=ro", uri=True)
    try:
        conn.row_factory = sqlite3.Row
        rows = conn.execute(
            "SELECT uuid, provision_state, reservation, target_power_state, deploy_step, clean_step, "
            "driver_internal_info FROM nodes"
        ).fetchall()
    finally:
        conn.close()
    out = {}
    for row in rows:
        d = dict(row)
        for key in ("deploy_step", "clean_step", "driver_internal_info"):
            d[key] = json.loads(d[key]) if d[key] else {}
        out[d["uuid"]] = d
    return out
