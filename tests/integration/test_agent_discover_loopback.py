"""Discovery end to end on loopback: a real `bootforge serve` with discovery on 127.0.0.0/8 and a rule,
and the agent as a process (`python -m bootforge.agent`) in discovery mode on a fake /proc + /sys tree,
with the kernel command line a discovery boot script gives it. The machine is enrolled, named and
given its driver by the rule; a second machine with the same serial and another NIC becomes a port of
the same node. (--sys-root keeps the agent from powering the test host off.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from support.service import BOOTFORGE, LATEST, Served, served

from bootforge.conductor.discovery_boot import new_boot_id, token_for
from bootforge.keys import load_or_create

RULE = {
    "name": "vm-rack",
    "conditions": [{"field": "inventory.system_vendor.manufacturer", "op": "eq", "value": "QEMU"}],
    "actions": [
        {"action": "set-driver", "value": "fake-hardware"},
        {"action": "set-name", "value": "rack1-{inventory.system_vendor.serial_number}"},
        {"action": "add-trait", "value": "CUSTOM_DISCOVERED"},
    ],
}


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Served]:
    env = {"BOOTFORGE_DISCOVERY__ENABLED": "true", "BOOTFORGE_DISCOVERY__SUBNETS": '["127.0.0.0/8"]'}
    yield from served(tmp_path, env=env)


def machine(root: Path, mac: str, serial: str, state_dir: Path, api: str) -> None:
    files = {
        "proc/cpuinfo": "processor\t: 0\nmodel name\t: QEMU\n\nprocessor\t: 1\nmodel name\t: QEMU\n",
        "proc/meminfo": "MemTotal:         985212 kB\n",
        "sys/class/net/eth0/address": mac + "\n",
        "sys/class/dmi/id/sys_vendor": "QEMU\n",
        "sys/class/dmi/id/product_name": "Standard PC\n",
        "sys/class/dmi/id/product_serial": serial + "\n",
    }
    boot = new_boot_id()
    token = token_for(load_or_create(state_dir / "secret.key"), mac, boot)
    files["proc/cmdline"] = (
        f"bootforge.api={api} bootforge.discovery={boot} bootforge.boot_token={token} BOOTIF={mac}\n"
    )
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)


def agent(root: Path) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "bootforge.agent", "--sys-root", str(root)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)


def test_discovered_and_merged_by_serial(server: Served, tmp_path: Path) -> None:
    with httpx.Client(base_url=server.url, headers=LATEST, timeout=10) as api:
        assert api.post("/v1/discovery_rules", json=RULE).status_code == 201
        first = tmp_path / "m1"
        machine(first, "52:54:00:de:00:01", "VM-SERIAL-1", server.state_dir, server.url)
        done = agent(first)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "enrolled as node rack1-VM-SERIAL-1" in done.stdout
        node = api.get("/v1/nodes/rack1-VM-SERIAL-1").json()
        assert node["provision_state"] == "enroll" and node["driver"] == "fake-hardware"
        assert api.get(f"/v1/nodes/{node['uuid']}/traits").json()["traits"] == ["CUSTOM_DISCOVERED"]
        assert api.get(f"/v1/nodes/{node['uuid']}/inventory").json()["inventory"]["cpu"]["count"] == 2
        second = tmp_path / "m2"
        machine(second, "52:54:00:de:00:02", "VM-SERIAL-1", server.state_dir, server.url)
        done = agent(second)
        assert done.returncode == 0 and "known as node rack1-VM-SERIAL-1" in done.stdout, done.stdout
        assert len(api.get("/v1/nodes").json()["nodes"]) == 1
        ports = api.get(f"/v1/ports?node={node['uuid']}&detail=true").json()["ports"]
        assert {(p["address"], p["pxe_enabled"]) for p in ports} == {
            ("52:54:00:de:00:01", True),
            ("52:54:00:de:00:02", False),
        }
        # A replayed boot (same command line, another MAC's machine) is refused and powers off.
        third = tmp_path / "m3"
        machine(third, "52:54:00:de:00:03", "VM-SERIAL-3", server.state_dir, server.url)
        cmdline = (third / "proc/cmdline").read_text().replace("52:54:00:de:00:03", "52:54:00:de:00:04")
        (third / "proc/cmdline").write_text(cmdline)
        done = agent(third)
        assert done.returncode == 1 and "discovery: refused" in done.stdout, done.stdout
        events = api.get(f"/v1/nodes/{node['uuid']}/history?detail=true").json()
        assert json.dumps(events).count("rediscovered") == 1


def cli(server: Served, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "BOOTFORGE_URL")}
    env |= {"BOOTFORGE_URL": server.url, "COLUMNS": "200"}
    return subprocess.run(
        [BOOTFORGE, *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )


def test_discovery_cli(server: Served) -> None:
    add = cli(
        server,
        *("discovery", "rule", "add", "rack1", "--priority", "5", "--match", "any"),
        *("--if", "inventory.system_vendor.manufacturer eq QEMU", "--if", "inventory.cpu.count gt 64"),
        *(
            "--driver",
            "ipmi",
            "--driver-info",
            "ipmi_address={inventory.bmc_address}",
            "--trait",
            "CUSTOM_R1",
        ),
        *("--name-pattern", "rack1-{inventory.system_vendor.serial_number}", "--property", "rack=1"),
    )
    assert add.returncode == 0, add.stdout + add.stderr
    listed = cli(server, "discovery", "rule", "list")
    assert "inventory.cpu.count gt 64" in listed.stdout and "set-driver" in listed.stdout
    shown = json.loads(cli(server, "discovery", "rule", "show", "rack1").stdout)
    assert shown["match"] == "any" and shown["conditions"][1]["value"] == 64
    assert {"action": "set-property", "field": "rack", "value": 1} in shown["actions"]
    bad = cli(
        server, "discovery", "rule", "add", "x", "--if", "inventory.cpu.count between 4", "--driver", "a"
    )
    assert bad.returncode == 1 and "conditions[0].op" in bad.stderr
    status = cli(server, "discovery", "status")
    assert "discovery on; subnets: 127.0.0.0/8" in status.stdout
    assert "; 1 rule" in status.stdout and "1 rules" not in status.stdout
    assert cli(server, "discovery", "rule", "delete", "rack1").returncode == 0
    assert cli(server, "discovery", "rule", "show", "rack1").returncode == 1
