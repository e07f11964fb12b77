"""End to end through BMCs bootforge did not write the protocol side of: a lab VM behind pyghmi's IPMI
server (`ipmi` driver, SeaBIOS, PXE) and one behind sushy-tools' Redfish emulator (`redfish` driver,
OVMF, PXE) is inspected, cleaned and deployed with the sample OS, and boots it from its disk.

The nodes are enrolled with the BMC's driver only (no qemu_* keys), so every power and boot-device
action of the deploy goes over IPMI or Redfish; the BMC's own log shows them arriving. Timings (power
on -> the agent's lookup, deploy -> active) are printed (run with -s to see them).
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from support.lab import RAMDISK_TIMEOUT, LabFactory, LabHandle, console_offset, wait_console

from bootforge.drivers.hardware import HARDWARE_TYPES
from bootforge.lab import sample_os
from bootforge.lab.lab import VmRecord
from bootforge.lab.sample_os import build_test_os, missing_tools

pytestmark = [pytest.mark.qemu, pytest.mark.slow, pytest.mark.netns]

GiB = 1024**3


def needs(bmc: str, firmware: str) -> None:
    if bmc not in HARDWARE_TYPES:
        pytest.skip(f"the {bmc} hardware type is not in bootforge.drivers.hardware.HARDWARE_TYPES yet")
    module = {"redfish": "sushy_tools", "ipmi": "pyghmi"}[bmc]
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"needs the Python package {module} (pip install -e '.[lab]')")
    missing = missing_tools("uefi" if firmware != "bios" else "bios")
    if missing:
        pytest.skip(f"needs {', '.join(missing)} to build the sample OS image")


def when(event: dict[str, Any]) -> dt.datetime:
    stamp = dt.datetime.fromisoformat(str(event["created_at"]).replace("Z", "+00:00"))
    return stamp if stamp.tzinfo else stamp.replace(tzinfo=dt.UTC)


def first_event(h: LabHandle, rec: VmRecord, text: str, since: dt.datetime) -> dt.datetime:
    found = [when(e) for e in h.history(rec) if text in e["event"] and when(e) >= since]
    assert found, f"no {text!r} event on the timeline since {since}"
    return min(found)


def deploy_through_bmc(h: LabHandle, bmc: str, firmware: str, boot_timeout: float) -> dict[str, float]:
    rec = h.vms[0]
    node = h.node(rec)
    assert node["driver"] == bmc
    assert not any(key.startswith("qemu_") for key in node["driver_info"]), node["driver_info"]
    image = build_test_os(firmware="uefi" if firmware != "bios" else "bios")
    r = h.api.post("/v1/images", json={"name": "sample-os", "source": str(image)})
    assert r.status_code == 201, r.text
    timings: dict[str, float] = {}

    # inspect (fast track: the same ramdisk boot cleans and deploys afterwards)
    started = dt.datetime.now(dt.UTC).replace(microsecond=0)
    h.verb(rec, "inspect")
    h.wait_state(rec, "manageable", RAMDISK_TIMEOUT)
    lookup = first_event(h, rec, "agent looked up", started)
    timings["inspect verb -> agent lookup (s)"] = (lookup - started).total_seconds()
    inventory = h.api.get(f"/v1/nodes/{rec.node}/inventory").json()["inventory"]
    assert [d["size"] for d in inventory["disks"]] == [1 * GiB]
    assert rec.mac in [nic["mac_address"] for nic in inventory["interfaces"]]

    h.verb(rec, "provide")
    h.wait_state(rec, "available", 180)

    user_data = f"hello through {bmc} {uuid.uuid4().hex[:8]}"
    patch = [{"op": "add", "path": "/instance_info/image_source", "value": "sample-os"}]
    assert h.api.patch(f"/v1/nodes/{rec.node}", json=patch).status_code == 200
    since = console_offset(rec)
    t0 = time.monotonic()
    h.verb(rec, "active", configdrive={"user_data": user_data})
    h.wait_state(rec, "active", 300)
    timings["deploy verb -> active (s)"] = time.monotonic() - t0
    wait_console(rec, sample_os.BOOTED_MARKER, boot_timeout, since)
    line = wait_console(rec, sample_os.USER_DATA_MARKER, 60, since)
    assert line.strip().endswith(sample_os.USER_DATA_MARKER + user_data), line
    assert any("handoff seen" in e["event"] for e in h.history(rec))
    return timings


def test_ipmi_bios_pxe_deploy(make_lab: LabFactory) -> None:
    needs("ipmi", "bios")
    h = make_lab(vms=1, firmware="bios", memory_mib=768, ramdisk="agent", bmc="ipmi")
    rec = h.vms[0]
    assert rec.bmc is not None and rec.bmc.startswith("ipmi ")
    timings = deploy_through_bmc(h, "ipmi", "bios", 120)
    print(f"\nipmi/bios: {timings}")
    h.power(rec, "power off")  # over IPMI too: the QEMU process is gone
    assert h.lab.status()[0]["power"] == "power off"


def test_redfish_uefi_pxe_deploy(make_lab: LabFactory) -> None:
    needs("redfish", "uefi")
    h = make_lab(vms=1, firmware="uefi", memory_mib=768, ramdisk="agent", bmc="redfish")
    rec = h.vms[0]
    assert rec.bmc is not None and rec.bmc.startswith("redfish https://")
    timings = deploy_through_bmc(h, "redfish", "uefi", 240)
    print(f"\nredfish/uefi: {timings}")
    # The emulator carried out the actions: resets and boot overrides arrived over HTTPS.
    log = (Path(h.lab.state.dir) / "bmc-redfish.log").read_text(errors="replace")
    assert "ComputerSystem.Reset" in log and "PATCH /redfish/v1/Systems/" in log
    h.power(rec, "power off")
    assert h.lab.status()[0]["power"] == "power off"
