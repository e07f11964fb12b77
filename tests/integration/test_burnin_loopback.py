"""Burn-in on loopback, no VM: a real `bootforge serve`, the real agent process running Debian's
stress-ng, memtester, fio (on a disk file) and iperf3 (against an iperf3 server this test starts on
127.0.0.1), driven through the API with manual cleaning: every step's numbers on the node and its
timeline; then a threshold the disk cannot meet fails the node with the numbers in last_error.

The node is fake-hardware with the agent's interfaces (tests/integration/test_agent_deploy_loopback.py
says how its "machine" restarts the agent at every ramdisk boot); the same steps run in the ramdisk
under QEMU in tests/integration/test_lab_burnin.py.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from support.service import Served, free_port
from test_agent_deploy_loopback import MAC, Machine, api, bf, verb, wait_state

__all__ = ["bf"]  # the fixture, shared with the deploy loopback test

MiB = 1024**2
TOOLS = {"stress-ng": "stress-ng", "memtester": "memtester", "fio": "fio", "iperf3": "iperf3"}


def cli(bf: Served, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "BOOTFORGE_URL": bf.url, "COLUMNS": "250"}
    argv = [sys.executable, "-m", "bootforge", *args]
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)


def test_manual_burn_in_keeps_the_numbers_and_a_missed_threshold_fails_the_node(
    bf: Served, tmp_path: Path
) -> None:
    missing = [f"{t} (Debian package {p})" for t, p in TOOLS.items() if shutil.which(t) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)}")
    disk = tmp_path / "disk.img"
    with open(disk, "wb") as f:
        f.truncate(64 * MiB)
    port = free_port()
    # One test at a time (-1), on loopback only; stopped by its PID below.
    server = subprocess.Popen(
        ["iperf3", "--server", "--bind", "127.0.0.1", "--port", str(port), "--one-off"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    agent_log = tmp_path / "agent.log"
    try:
        with api(bf) as c:
            body = {"driver": "fake-hardware", "name": "burn-1", "boot_interface": "pxe",
                    "deploy_interface": "direct", "inspect_interface": "agent"}  # fmt: skip
            node = c.post("/v1/nodes", json=body).json()["uuid"]
            assert c.post("/v1/ports", json={"node_uuid": node, "address": MAC}).status_code == 201
            verb(c, node, "manage")
            wait_state(c, node, "manageable")
            steps = [
                {"interface": "deploy", "step": "burnin_cpu", "args": {"seconds": 2, "cpus": 1}},
                {"interface": "deploy", "step": "burnin_memory", "args": {"size_mib": 4}},
                {"interface": "deploy", "step": "burnin_disk", "args": {"seconds": 1, "size_mib": 32}},
                {
                    "interface": "deploy",
                    "step": "burnin_network",
                    "args": {"server": "127.0.0.1", "port": port, "seconds": 2, "min_bandwidth_mbps": 1},
                },
            ]
            with Machine(bf, node, disk, agent_log):
                verb(c, node, "clean", clean_steps=steps)
                done = wait_state(c, node, "manageable", 240)
                results = done["driver_internal_info"]["burnin"]
                assert set(results) == {"cpu", "memory", "disk", "network"}
                assert all(r["passed"] for r in results.values()), results
                assert results["cpu"]["bogo_ops_per_s"] > 0 and results["cpu"]["tool"].startswith("stress-ng")
                assert results["memory"]["tested_mib"] == 4 and results["memory"]["tests"] == 18
                (tested,) = results["disk"]["disks"]
                assert tested["name"] == str(disk)
                assert [j["job"] for j in tested["jobs"]] == [
                    "seqread_1m", "seqwrite_1m", "randread_4k", "randwrite_4k"
                ]  # fmt: skip
                assert all(j["iops"] > 0 and j["lat_p99_ms"] is not None for j in tested["jobs"])
                assert results["network"]["received_mbps"] > 1
                history = [e["event"] for e in c.get(f"/v1/nodes/{node}/history").json()["history"]]
                for kind in ("cpu", "memory", "disk", "network"):
                    assert any(e.startswith(f"burn-in {kind}: ") and e.endswith("passed") for e in history), (
                        kind
                    )
                shown = cli(bf, "node", "burnin", node)
                assert shown.returncode == 0, shown.stderr
                assert "passed" in shown.stdout and "randwrite_4k" in shown.stdout, shown.stdout

                # A threshold no disk file meets: the node fails cleaning with the measured numbers.
                impossible = {
                    "seconds": 1,
                    "size_mib": 32,
                    "jobs": ["seqread_1m"],
                    "min_bandwidth_mib_s": 900000,
                }
                verb(
                    c,
                    node,
                    "clean",
                    clean_steps=[{"interface": "deploy", "step": "burnin_disk", "args": impossible}],
                )
                failed = wait_state(c, node, "clean failed", 240)
                error = failed["last_error"]
                pattern = (
                    rf"burn-in disk failed: fio seqread_1m on {re.escape(str(disk))}: "
                    r"[\d.]+ MiB/s < min_bandwidth_mib_s 900000$"
                )
                assert re.search(pattern, error), error
                kept = failed["driver_internal_info"]["burnin"]
                assert kept["disk"]["passed"] is False and kept["disk"]["failures"][0] in error
                assert kept["cpu"]["passed"] is True  # the earlier run's other results stay
                shown = cli(bf, "node", "burnin", node)
                assert shown.returncode == 1 and "FAILED: fio seqread_1m" in shown.stdout, shown.stdout
    finally:
        if server.poll() is None:
            server.terminate()
            server.wait(10)
        print(agent_log.read_text()[-3000:] if agent_log.exists() else "no agent log")
