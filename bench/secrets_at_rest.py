"""CPU cost of encrypting BMC passwords at rest: one in-process bootforge, fake-hardware, zero delays.

Enrols N nodes whose driver_info carries an ipmi_password, lists them, and drives every node through
manage -> provide -> active -> deleted, measuring the process's CPU time per phase (API, conductor and
SQLite share this one process, as in `bootforge serve`). Run it on two checkouts to compare:

    .venv/bin/python bench/secrets_at_rest.py --nodes 300 --rounds 3
    PYTHONPATH=/tmp/old-checkout .venv/bin/python bench/secrets_at_rest.py --nodes 300 --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx

import bootforge
from bootforge.api.app import create_app
from bootforge.cli.serve import build
from bootforge.config import Settings

HEADERS = {"X-OpenStack-Ironic-API-Version": "1.78"}
STEPS = (("manage", "manageable"), ("provide", "available"), ("active", "active"), ("deleted", "available"))


async def lanes(items: list[Any], fn: Callable[[Any], Awaitable[None]], concurrency: int) -> None:
    it = iter(items)

    async def lane() -> None:
        for item in it:
            await fn(item)

    async with asyncio.TaskGroup() as group:
        for _ in range(concurrency):
            group.create_task(lane())


async def run(nodes: int, concurrency: int, lists: int, state: Path) -> dict[str, float]:
    settings = Settings.model_validate(
        {
            "state_dir": state,
            "host": "bench",
            "power_sync_interval": 0,
            "timeout_check_interval": 0,
            "conductor_heartbeat_interval": 0,
            "automated_clean": False,
            "enabled_hardware_types": ["fake-hardware"],
            "log_level": "warning",
        }
    )
    db, conductor, services = await build(settings)
    app = create_app(services)
    cpu: dict[str, float] = {}
    try:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost", headers=HEADERS) as c:

            async def enrol(i: int) -> None:
                info = {
                    "ipmi_address": f"10.0.{i // 250}.{i % 250}",
                    "ipmi_username": "admin",
                    "ipmi_password": f"bench-password-{i:05d}",
                }
                r = await c.post(
                    "/v1/nodes", json={"driver": "fake-hardware", "name": f"n{i}", "driver_info": info}
                )
                assert r.status_code == 201, r.text

            t = time.process_time()
            await lanes(list(range(nodes)), enrol, concurrency)
            cpu["enrol"] = time.process_time() - t

            t = time.process_time()
            for _ in range(lists):
                r = await c.get("/v1/nodes/detail")
                assert r.status_code == 200 and len(r.json()["nodes"]) == nodes
            cpu["list_detail"] = time.process_time() - t

            t = time.process_time()
            for verb, stable in STEPS:

                async def act(i: int, verb: str = verb) -> None:
                    r = await c.put(f"/v1/nodes/n{i}/states/provision", json={"target": verb})
                    assert r.status_code == 202, r.text

                await lanes(list(range(nodes)), act, concurrency)
                await conductor.wait_idle(timeout=600)
                r = await c.get("/v1/nodes", params={"fields": "provision_state"})
                found = {n["provision_state"] for n in r.json()["nodes"]}
                assert found == {stable}, (verb, found)
            cpu["lifecycle"] = time.process_time() - t
    finally:
        await conductor.stop(grace=5)
        await db.close()
    return cpu


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nodes", type=int, default=300)
    p.add_argument("--concurrency", type=int, default=20)
    p.add_argument("--lists", type=int, default=20, help="GET /v1/nodes/detail calls")
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    print(f"bootforge from {Path(bootforge.__file__).parent}")
    results: dict[str, list[float]] = {}
    for _ in range(args.rounds):
        with tempfile.TemporaryDirectory() as tmp:
            for name, seconds in asyncio.run(
                run(args.nodes, args.concurrency, args.lists, Path(tmp))
            ).items():
                results.setdefault(name, []).append(seconds)
    for name, values in results.items():
        per = {"enrol": args.nodes, "list_detail": args.lists, "lifecycle": args.nodes}[name]
        unit = "call" if name == "list_detail" else "node"
        print(
            f"{name:12} CPU median {statistics.median(values):7.3f} s  "
            f"({1000 * statistics.median(values) / per:.3f} ms per {unit}; runs: "
            + ", ".join(f"{v:.3f}" for v in values)
            + ")"
        )


if __name__ == "__main__":
    main()
