"""`bootforge serve` with its netboot services, in a network namespace, against real clients.

The whole product runs as an operator would start it, inside the server namespace: API on that
namespace's loopback, DHCP (full mode) on its LAN interface, TFTP and HTTP boot on its address. A
machine is enrolled through the API; a busybox udhcpc client with PXE options gets its lease and
boot file, fetches the loader by TFTP and its iPXE script by HTTP; the node's timeline shows all of it.
"""

from __future__ import annotations

import stat
import time
from pathlib import Path
from typing import Any

import pytest
from support.netns import Lan
from support.serve_netns import api, serve_in
from support.tools import need

pytestmark = pytest.mark.netns

PXE_X64 = "PXEClient:Arch:00007:UNDI:003000"


def config(tmp_path: Path) -> Path:
    path = tmp_path / "bootforge.toml"
    path.write_text(
        f"""
state_dir = "{tmp_path / "state"}"
listen = "127.0.0.1:6385"
power_sync_interval = 0
enabled_hardware_types = ["fake-hardware"]

[netboot]
address = "10.213.0.1"
dhcp = "full"
dhcp_interfaces = ["eth0"]
tftp = true
http = true
http_port = 8080

[[netboot.subnets]]
network = "10.213.0.0/24"
pool = "10.213.0.100-10.213.0.150"
routers = ["10.213.0.1"]
lease_time = 600
"""
    )
    return path


@pytest.fixture
def served(netns_lan: Lan, tmp_path: Path) -> Any:
    need("curl", "curl")
    log = tmp_path / "serve.log"
    with serve_in(netns_lan, config(tmp_path), log):
        yield netns_lan, log


def udhcpc_script(path: Path) -> Path:
    script = path.with_suffix(".sh")
    script.write_text(f'#!/bin/sh\n{{ echo "=== $1"; env | grep -v "^_="; }} >> {path}\n')
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return script


def bound_env(path: Path) -> dict[str, str]:
    block: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if line.startswith("=== "):
            block = {"@": line[4:]}
        elif "=" in line:
            key, _, value = line.partition("=")
            block[key] = value
    assert block.get("@") == "bound", path.read_text()
    return block


def http_events(lan: Lan, node_uuid: str) -> list[str]:
    history = api(lan, "GET", f"/v1/nodes/{node_uuid}/history?detail=true")["history"]
    return [e["event"] for e in history if e["event_type"] == "http"]


def test_a_machine_boots_its_chain_from_bootforge_serve(served: Any, tmp_path: Path) -> None:
    busybox = need("busybox", "busybox")
    lan, _log = served
    client = lan.client
    node = api(lan, "POST", "/v1/nodes", {"driver": "fake-hardware", "name": "rack1-node1"})
    api(lan, "POST", "/v1/ports", {"node_uuid": node["uuid"], "address": client.mac})
    # The netboot view refreshes every 2 s: wait until bootforge's own boot script knows the MAC.
    # The script does not say whose MAC it is (issue #11); the node's timeline gets the refusal.
    script_url = f"http://10.213.0.1:8080/boot/ipxe?mac={client.mac}"
    refused: list[str] = []
    for _ in range(100):
        lan.server.ns.run(["curl", "-sS", script_url], check=False)
        history = api(lan, "GET", f"/v1/nodes/{node['uuid']}/history?detail=true")["history"]
        refused = [e["event"] for e in history if e["event_type"] == "boot"]
        if refused:
            break
        time.sleep(0.2)
    assert any("node rack1-node1 is enroll" in e for e in refused), refused
    # The probes are on the timeline too, written in 0.5 s batches: count them once they settle.
    probes = -1
    for _ in range(20):
        time.sleep(0.6)
        count = len(http_events(lan, node["uuid"]))
        if count == probes:
            break
        probes = count

    env = tmp_path / "udhcpc.env"
    dhcp = client.ns.run(
        [
            busybox,
            "udhcpc",
            "-i",
            "eth0",
            "-f",
            "-q",
            "-n",
            "-t",
            "5",
            "-T",
            "1",
            "-s",
            str(udhcpc_script(env)),
            "-V",
            PXE_X64,
            "-x",
            "0x5d:0007",
        ],
        check=False,
        timeout=30,
    )
    assert dhcp.returncode == 0, dhcp.stderr
    lease = bound_env(env)
    assert lease["ip"].startswith("10.213.0.") and lease["boot_file"] == "ipxe.efi"
    assert lease["siaddr"] == "10.213.0.1"

    client.ns.ip("addr", "add", f"{lease['ip']}/24", "dev", "eth0")
    loader = tmp_path / "ipxe.efi"
    tftp = client.ns.run(["curl", "-sS", "-o", str(loader), "tftp://10.213.0.1/ipxe.efi"], check=False)
    assert tftp.returncode == 0, tftp.stderr
    assert loader.read_bytes() == Path("/usr/lib/ipxe/ipxe.efi").read_bytes()

    script = client.ns.run(
        ["curl", "-sS", f"http://10.213.0.1:8080/boot/ipxe?mac={client.mac}&platform=efi"], check=True
    ).stdout
    assert script.startswith("#!ipxe")
    # The script says neither whose MAC it is nor the node's state; the node's timeline does.
    assert "nothing to boot for this machine now" in script and "rack1-node1" not in script

    # Netboot events are written in batches every 0.5 s.
    by_type: dict[str, list[str]] = {}
    for _ in range(50):
        history = api(lan, "GET", f"/v1/nodes/{node['uuid']}/history?detail=true")["history"]
        by_type = {}
        for e in history:
            by_type.setdefault(e["event_type"], []).append(e["event"])
        if {"dhcp", "tftp", "boot"} <= set(by_type) and len(by_type.get("http", [])) > probes:
            break
        time.sleep(0.2)
    assert any("dhcp.ack" in t and lease["ip"] in t for t in by_type["dhcp"]), by_type
    assert any("tftp ipxe.efi completed" in t for t in by_type["tftp"]), by_type
    assert len(by_type["http"]) > probes and "http GET /boot/ipxe 200" in by_type["http"][-1], by_type
    assert any("node rack1-node1 is enroll: nothing to boot" in t for t in by_type["boot"]), by_type


def test_unknown_machines_are_ignored(served: Any, tmp_path: Path) -> None:
    busybox = need("busybox", "busybox")
    lan, _ = served
    dhcp = lan.client.ns.run(
        [
            busybox,
            "udhcpc",
            "-i",
            "eth0",
            "-f",
            "-q",
            "-n",
            "-t",
            "2",
            "-T",
            "1",
            "-s",
            str(udhcpc_script(tmp_path / "env")),
            "-V",
            PXE_X64,
        ],
        check=False,
        timeout=30,
    )
    assert dhcp.returncode != 0  # no lease: bootforge answers only machines it knows
