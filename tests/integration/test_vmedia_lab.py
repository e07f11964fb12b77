"""A node on a network without DHCP is deployed from virtual media, end to end.

`bootforge lab up --dhcp off`: nothing answers DHCP on the lab's bridge. The VM is enrolled with the
qemu type's `virtual-media` boot interface and a static `network_data`; bootforge builds the ramdisk
ISO, inserts it into the VM's CD drive over QMP and boots it once; the ramdisk sets the static address
itself and its agent inspects, cleans (fast track: one ramdisk boot) and writes the sample OS, which
then boots from the disk and prints its marker and the user data on the console.
"""

from __future__ import annotations

import re
import time
import uuid
from pathlib import Path

import pytest
from support.lab import RAMDISK_TIMEOUT, LabFactory, console_offset, wait_console

from bootforge.images import bootiso
from bootforge.lab.lab import static_network_data
from bootforge.lab.sample_os import build_test_os, missing_tools

pytestmark = [pytest.mark.qemu, pytest.mark.slow, pytest.mark.netns]


@pytest.mark.parametrize("firmware", ["bios", "uefi"])
def test_deploy_from_virtual_media_without_dhcp(make_lab: LabFactory, firmware: str) -> None:
    missing = missing_tools(firmware) + bootiso.missing_tools()
    if missing:
        pytest.skip(f"needs {', '.join(missing)}")
    image = build_test_os(firmware=firmware)
    h = make_lab(vms=1, firmware=firmware, memory_mib=768, dhcp="off", ramdisk="agent")
    rec = h.vms[0]
    node = h.node(rec)
    assert node["boot_interface"] == "virtual-media"
    assert node["network_data"] == static_network_data(rec)
    address = node["network_data"]["networks"][0]["ip_address"]
    serve_log = Path(h.lab.state.dir) / "serve.log"
    assert re.search(r"DHCP off", serve_log.read_text()), "the lab's bootforge must run no DHCP"
    r = h.api.post("/v1/images", json={"name": "sample-os", "source": str(image)})
    assert r.status_code == 201, r.text

    # inspect: the ramdisk boots from the CD and its agent reports the static address
    since = console_offset(rec)
    started = time.monotonic()
    h.verb(rec, "inspect")
    h.wait_state(rec, "manageable", RAMDISK_TIMEOUT)
    print(f"\n{firmware}: inspect through virtual media took {time.monotonic() - started:.1f} s")
    wait_console(rec, f"bootforge-netconfig: static eth0 ({rec.mac}): {address}/24", 5, since)
    console = rec.console.read_bytes()[since:].decode(errors="replace")
    assert "udhcpc" not in console, "the ramdisk ran DHCP"
    inventory = h.api.get(f"/v1/nodes/{rec.node}/inventory").json()["inventory"]
    nic = next(i for i in inventory["interfaces"] if i["mac_address"] == rec.mac)
    assert nic["ipv4_address"] == address
    events = [e["event"] for e in h.history(rec)]
    built = [e for e in events if "virtual media: built" in e]
    assert built, events
    print(f"{firmware}: {built[0]}")
    assert any("inserted into" in e for e in events), events

    # provide (cleaned by the same agent) and deploy: active, the sample OS boots from the disk
    h.verb(rec, "provide")
    h.wait_state(rec, "available", 180)
    started = time.monotonic()
    h.deploy_sample_os(rec, "sample-os", f"hello over virtual media {uuid.uuid4().hex[:8]}", 120)
    print(f"{firmware}: deploy to the sample OS's marker took {time.monotonic() - started:.1f} s")
    events = [e["event"] for e in h.history(rec)]
    assert any("virtual media: ejected" in e for e in events), events
    # The ISO was served from the netboot root while it was needed and is gone now.
    isos = Path(h.lab.state.dir) / "boot" / "vmedia"
    assert list(isos.glob("*.iso")) == []

    # undeploy: the CD goes into the running VM, which reboots into the ramdisk to clean its disk
    since = console_offset(rec)
    h.verb(rec, "deleted")
    h.wait_state(rec, "available", RAMDISK_TIMEOUT)
    wait_console(rec, f"bootforge-netconfig: static eth0 ({rec.mac}): {address}/24", 5, since)
    # Fast track keeps that ramdisk running for the next operation, so its ISO stays until it is left.
    assert len(list(isos.glob(f"{rec.node}-*.iso"))) == 1
