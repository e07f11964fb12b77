"""Stretch goal of issue #10 part 4: `redfish-virtual-media` end to end through the lab's emulated BMC.

`bootforge lab up --bmc redfish --dhcp off`: the VM sits behind sushy-tools' Redfish emulator
(bootforge.lab.redfish_bmc) and nothing answers DHCP on the bridge. bootforge builds the ramdisk ISO,
serves it from its HTTP boot server, and the BMC fetches it on InsertMedia; the boot source is set to
Cd once. The ramdisk sets its static address, inspects, cleans and writes the sample OS, and the node
ends `active` with the sample OS's marker on the console. bootforge never touches the VM over QMP.
"""

from __future__ import annotations

import importlib.util
import time
import uuid

import pytest
from support.lab import RAMDISK_TIMEOUT, LabFactory, console_offset, wait_console

from bootforge.images import bootiso
from bootforge.lab.sample_os import build_test_os, missing_tools

pytestmark = [pytest.mark.qemu, pytest.mark.slow, pytest.mark.netns]


def test_deploy_through_redfish_virtual_media_without_dhcp(make_lab: LabFactory) -> None:
    missing = missing_tools() + bootiso.missing_tools()
    if importlib.util.find_spec("sushy_tools") is None:
        missing.append("sushy-tools (pip install -e '.[lab]')")
    if missing:
        pytest.skip(f"needs {', '.join(missing)}")
    image = build_test_os()
    h = make_lab(vms=1, firmware="bios", memory_mib=768, dhcp="off", ramdisk="agent", bmc="redfish")
    rec = h.vms[0]
    node = h.node(rec)
    assert node["driver"] == "redfish"
    assert node["boot_interface"] == "redfish-virtual-media"
    address = node["network_data"]["networks"][0]["ip_address"]
    r = h.api.post("/v1/images", json={"name": "sample-os", "source": str(image)})
    assert r.status_code == 201, r.text

    since = console_offset(rec)
    started = time.monotonic()
    h.verb(rec, "inspect")
    h.wait_state(rec, "manageable", RAMDISK_TIMEOUT)
    print(f"\nredfish: inspect through virtual media took {time.monotonic() - started:.1f} s")
    wait_console(rec, f"bootforge-netconfig: static eth0 ({rec.mac}): {address}/24", 5, since)
    events = [e["event"] for e in h.history(rec)]
    inserted = [e for e in events if "BMC inserted http://" in e]
    assert inserted, events
    print(f"redfish: {inserted[0]}")

    h.verb(rec, "provide")
    h.wait_state(rec, "available", 180)
    started = time.monotonic()
    h.deploy_sample_os(rec, "sample-os", f"hello over redfish virtual media {uuid.uuid4().hex[:8]}", 120)
    print(f"redfish: deploy to the sample OS's marker took {time.monotonic() - started:.1f} s")
    assert any("virtual media: ejected" in e["event"] for e in h.history(rec))
