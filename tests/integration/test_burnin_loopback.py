"""Burn-in on loopback, no VM: a real `bootforge serve`, the real agent process running Debian's
stress-ng, memtester, fio (on a disk file) and iperf3 (against an iperf3 server this test starts on
127.0.0.1), driven through the API with manual cleaning: every step's numbers on the node and its
timeline; then a threshold the disk cannot meet fails the node with the numbers in last_error. A second
test pairs two nodes' agents: one serves iperf3 (burnin_network_serve), the other measures against it.

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


def test_network_burn_in_between_two_nodes_agents(bf: Served, tmp_path: Path) -> None:
    """Node A's agent serves iperf3 (burnin_network_serve), node B's measures against it (partner: A):
    two manual cleans started together, two real agent processes on 127.0.0.1, Debian's iperf3 on both
    sides, no server the test runs itself."""
    if shutil.which("iperf3") is None:
        pytest.skip("needs iperf3 (Debian package iperf3)")
    port = free_port()
    nodes: dict[str, str] = {}
    machines = []
    with api(bf) as c:
        for name, mac in (("pair-a", "52:54:00:12:34:a1"), ("pair-b", "52:54:00:12:34:b2")):
            body = {"driver": "fake-hardware", "name": name, "boot_interface": "pxe",
                    "deploy_interface": "direct", "inspect_interface": "agent"}  # fmt: skip
            nodes[name] = c.post("/v1/nodes", json=body).json()["uuid"]
            assert c.post("/v1/ports", json={"node_uuid": nodes[name], "address": mac}).status_code == 201
            verb(c, nodes[name], "manage")
            disk = tmp_path / f"{name}.img"
            with open(disk, "wb") as f:
                f.truncate(16 * MiB)
            machines.append(Machine(bf, nodes[name], disk, tmp_path / f"{name}.log", mac=mac))
        for name in nodes:
            wait_state(c, nodes[name], "manageable")
        serve = {
            "interface": "deploy",
            "step": "burnin_network_serve",
            "args": {"seconds": 120, "port": port},
        }
        measure = {
            "interface": "deploy",
            "step": "burnin_network",
            "args": {"partner": "pair-a", "partner_wait": 120, "seconds": 2, "min_bandwidth_mbps": 1},
        }
        try:
            for m in machines:
                m.__enter__()
            # B first: its conductor waits for A's record, as when an operator starts both at once.
            verb(c, nodes["pair-b"], "clean", clean_steps=[measure])
            verb(c, nodes["pair-a"], "clean", clean_steps=[serve])
            b = wait_state(c, nodes["pair-b"], "manageable", 240)
            a = wait_state(c, nodes["pair-a"], "manageable", 240)
        finally:
            for m in machines:
                m.__exit__(None, None, None)
            for name in nodes:
                text = (
                    (tmp_path / f"{name}.log").read_text()[-2000:]
                    if (tmp_path / f"{name}.log").exists()
                    else ""
                )
                print(f"--- agent {name}\n{text}")
        client = b["driver_internal_info"]["burnin"]["network"]
        assert client["passed"] and client["server"] == "127.0.0.1" and client["received_mbps"] > 1, client
        served = a["driver_internal_info"]["burnin"]["network_serve"]
        assert served["passed"] and served["client"] == "127.0.0.1" and served["port"] == port, served
        assert served["received_mbps"] > 1 and served["address"] == "127.0.0.1"
        assert "burnin_serving" not in a["driver_internal_info"]  # the record went with the step
        history_b = [e["event"] for e in c.get(f"/v1/nodes/{nodes['pair-b']}/history").json()["history"]]
        assert any(f"node pair-a serves on 127.0.0.1:{port}" in e for e in history_b), history_b
        history_a = [e["event"] for e in c.get(f"/v1/nodes/{nodes['pair-a']}/history").json()["history"]]
        assert any(e.startswith("burn-in network_serve: ") and "served 127.0.0.1" in e for e in history_a)
        print(
            f"pair: B received {client['received_mbps']} Mbit/s, A received {served['received_mbps']} Mbit/s"
        )
