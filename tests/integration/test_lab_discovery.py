"""Discovery in the lab (#15): three QEMU VMs that bootforge does not know are powered on; bootforge's
DHCP (full mode, discovery on the lab's subnet) offers them iPXE, the discovery script boots the agent
ramdisk, the agent reports the inventory and powers the VM off. Rules name them and give them the
qemu driver (their QMP socket and definition file from the serial, which the lab sets to the VM's
name), and the nodes carry their inventory and a PXE port on the booting MAC. Then one of them boots
again with its NIC replaced (same serial, new MAC): no second node, a new port on the first.

Each VM is driven only by its own firmware and bootforge; the test starts the QEMU processes
(Lab.start_unknown) the way someone racking a machine presses its power button.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from support.lab import lab_unavailable_reason

from bootforge.drivers import qemu_machine as vm
from bootforge.lab.lab import Lab, LabError, VmRecord

pytestmark = [pytest.mark.qemu, pytest.mark.slow, pytest.mark.netns]

DISCOVERY_TIMEOUT = 600.0  # three TCG VMs at once on a shared 2-core host: firmware, iPXE, ramdisk
NEW_MAC = "52:54:00:77:00:f1"


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    reason = lab_unavailable_reason("bios")
    if reason is not None:
        pytest.skip(reason)
    try:
        built = Lab.up(tmp_path / "lab", 3, "bios", 384, "full", start=False, ramdisk="agent", discovery=True)
    except LabError as e:
        pytest.fail(f"lab up failed: {e}")
    try:
        yield built
    finally:
        built.down()


def rules(lab: Lab) -> list[dict[str, Any]]:
    vms = f"{lab.dir}/vms/{{inventory.system_vendor.serial_number}}"
    return [
        {
            "name": "lab-vms",
            "priority": 100,
            "conditions": [
                {"field": "inventory.system_vendor.manufacturer", "op": "eq", "value": "QEMU"},
                {"field": "inventory.system_vendor.serial_number", "op": "matches", "value": "vm[0-9]+"},
            ],
            "actions": [
                {"action": "set-driver", "value": "qemu"},
                {"action": "set-driver-info", "field": "qemu_qmp_socket", "value": f"{vms}/qmp.sock"},
                {"action": "set-driver-info", "field": "qemu_command", "value": f"{vms}/vm.json"},
                {"action": "set-name", "value": "disc-{inventory.system_vendor.serial_number}"},
                {"action": "set-resource-class", "value": "lab-vm"},
                {"action": "add-trait", "value": "CUSTOM_DISCOVERED"},
            ],
        },
        {
            # Lower priority: its resource class loses to the rule above, its trait is added.
            "name": "everyone",
            "priority": 1,
            "actions": [
                {"action": "set-resource-class", "value": "generic"},
                {"action": "add-trait", "value": "CUSTOM_RACK1"},
            ],
        },
    ]


def wait(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(1.0)


def qemu_gone(rec: VmRecord) -> bool:
    pid = vm.read_pid(rec.pid_file)
    return pid is None or not vm.pid_alive(pid)


def nodes(api: httpx.Client) -> dict[str, dict[str, Any]]:
    r = api.get("/v1/nodes", params={"detail": "true"})
    assert r.status_code == 200, r.text
    return {n["name"]: n for n in r.json()["nodes"]}


def ports(api: httpx.Client, node: str) -> set[tuple[str, bool]]:
    found = api.get("/v1/ports", params={"node": node, "detail": "true"}).json()["ports"]
    return {(p["address"], p["pxe_enabled"]) for p in found}


def test_three_unknown_vms_are_discovered_named_and_given_drivers(lab: Lab) -> None:
    recs = lab.state.vms
    with lab.client(timeout=60) as api:
        for rule in rules(lab):
            assert api.post("/v1/discovery_rules", json=rule).status_code == 201
        started = time.monotonic()
        for rec in recs:
            lab.start_unknown(rec)
        want = {f"disc-{rec.name}" for rec in recs}
        wait(lambda: want <= set(nodes(api)), DISCOVERY_TIMEOUT, f"nodes {sorted(want)}")
        wait(lambda: all(qemu_gone(r) for r in recs), 120, "the agents to power their VMs off")
        seconds = time.monotonic() - started
        print(f"3 VMs discovered and powered off in {seconds:.1f} s")
        found = nodes(api)
        assert len(found) == 3
        for rec in recs:
            node = found[f"disc-{rec.name}"]
            assert node["provision_state"] == "enroll" and node["driver"] == "qemu"
            assert node["driver_info"]["qemu_command"] == str(rec.definition)
            assert node["resource_class"] == "lab-vm"
            assert node["properties"]["memory_mb"] == 384 and node["properties"]["cpus"] >= 1
            traits = api.get(f"/v1/nodes/{node['uuid']}/traits").json()["traits"]
            assert traits == ["CUSTOM_DISCOVERED", "CUSTOM_RACK1"]
            inventory = api.get(f"/v1/nodes/{node['uuid']}/inventory").json()["inventory"]
            assert inventory["system_vendor"]["serial_number"] == rec.name
            assert inventory["boot"]["pxe_interface"] == rec.mac
            assert ports(api, node["uuid"]) == {(rec.mac, True)}
        # The driver the rule gave works: bootforge powers the first VM on and off through it.
        first = found[f"disc-{recs[0].name}"]
        for target, state in (("power on", "power on"), ("power off", "power off")):
            assert (
                api.put(f"/v1/nodes/{first['uuid']}/states/power", json={"target": target}).status_code == 202
            )
            wait(
                lambda s=state: api.get(f"/v1/nodes/{first['uuid']}").json()["power_state"] == s,  # type: ignore[misc]
                60,
                f"{first['name']} {state}",
            )
        # A fourth boot: vm1 with its NIC replaced. Same serial, so the same node, one more port.
        again = time.monotonic()
        lab.start_unknown(recs[0], mac=NEW_MAC)
        wait(lambda: (NEW_MAC, False) in ports(api, first["uuid"]), DISCOVERY_TIMEOUT, "vm1's new port")
        wait(lambda: qemu_gone(recs[0]), 120, "vm1 powered off again")
        print(f"vm1 rediscovered with a new NIC in {time.monotonic() - again:.1f} s")
        assert len(nodes(api)) == 3
        assert ports(api, first["uuid"]) == {(recs[0].mac, True), (NEW_MAC, False)}
        history = api.get(f"/v1/nodes/{first['uuid']}/history", params={"detail": "true"}).json()
        assert any("rediscovered" in e["event"] for e in history["history"]), history
