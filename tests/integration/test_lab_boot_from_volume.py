"""Boot from volume in the lab: a QEMU VM with no disk at all is deployed onto an iSCSI volume holding the
sample OS and boots it to the OS's marker.

The peer on the storage side is Debian's tgt (tgtd, user space), started by the test inside the lab's
namespace and listening on the bridge address only, with the initiator-name ACL and CHAP. bootforge
writes no image: the deploy sets the node's storage interface to iscsi through Ironic's volume API
(connector = the VM's initiator IQN, target = the tgt LUN), and from then on the VM's every boot is
SeaBIOS -> the NIC's iPXE -> bootforge's DHCP -> its boot script -> `sanboot iscsi:...`: iPXE logs in
with CHAP and hooks the LUN as BIOS disk 0x80, the sample OS's syslinux reads the kernel and initramfs
through INT 13h (so over iSCSI), and the kernel's initramfs prints the marker. (Its root is that
initramfs: a root file system on the iSCSI disk itself would need an initiator in the OS's initrd,
which would find the connection in the iBFT iPXE publishes.)
"""

from __future__ import annotations

import json
import shutil
import time
import uuid
from pathlib import Path

import pytest
from support.lab import LabFactory, console_offset, wait_console

from bootforge.lab import iscsi_target, sample_os
from bootforge.lab.lab import ADDRESS

pytestmark = [pytest.mark.qemu, pytest.mark.slow, pytest.mark.netns]

V = {"X-OpenStack-Ironic-API-Version": "1.78"}
TARGET_IQN = "iqn.2026-12.org.bootforge.lab:sample-os"
INITIATOR_IQN = "iqn.2026-12.org.bootforge.lab:vm1"


def test_diskless_vm_boots_the_sample_os_from_iscsi(make_lab: LabFactory, tmp_path: Path) -> None:
    missing = sample_os.missing_tools() + iscsi_target.missing_tools()
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (Debian packages syslinux, mtools, dosfstools, fdisk, tgt)")
    image = sample_os.build_test_os()
    h = make_lab(vms=1, firmware="bios", memory_mib=384, ramdisk="probe")
    rec = h.vms[0]
    # No disk at all: the VM's definition (read at each power on) loses the lab's disk.
    definition = json.loads(rec.definition.read_text())
    definition["disks"] = []
    rec.definition.write_text(json.dumps(definition, indent=2))
    rec.disk.unlink(missing_ok=True)

    volume = tmp_path / "volume.raw"
    shutil.copyfile(image, volume)
    chap_user, chap_password = "vm1", f"chap-{uuid.uuid4().hex[:12]}"
    target = iscsi_target.TgtTarget(
        netns=h.lab.state.netns,
        address=ADDRESS,
        iqn=TARGET_IQN,
        backing_file=volume,
        log=tmp_path / "tgtd.log",
        initiator_iqn=INITIATOR_IQN,
        chap_user=chap_user,
        chap_password=chap_password,
    )
    target.start()
    try:
        node = rec.node
        patch = [
            {"op": "replace", "path": "/storage_interface", "value": "iscsi"},
            # Nothing to erase on a machine without disks; and no ramdisk boot on the way to available.
            {"op": "replace", "path": "/automated_clean", "value": False},
        ]
        assert h.api.patch(f"/v1/nodes/{node}", json=patch, headers=V).status_code == 200
        r = h.api.post(
            "/v1/volume/connectors",
            json={"node_uuid": node, "type": "iqn", "connector_id": INITIATOR_IQN},
            headers=V,
        )
        assert r.status_code == 201, r.text
        properties = {
            "target_iqn": TARGET_IQN,
            "target_portal": f"{ADDRESS}:3260",
            "target_lun": 1,
            "auth_method": "CHAP",
            "auth_username": chap_user,
            "auth_password": chap_password,
        }
        r = h.api.post(
            "/v1/volume/targets",
            json={
                "node_uuid": node,
                "volume_type": "iscsi",
                "boot_index": 0,
                "volume_id": "sample-os",
                "properties": properties,
            },
            headers=V,
        )
        assert r.status_code == 201, r.text
        assert r.json()["properties"]["auth_password"] == "******"

        h.verb(rec, "provide")
        h.wait_state(rec, "available", 60)
        since = console_offset(rec)
        started = time.monotonic()
        h.verb(rec, "active")
        h.wait_state(rec, "active", 120)
        wait_console(rec, sample_os.BOOTED_MARKER, 300, since)
        seconds = time.monotonic() - started
        print(f"deploy to the sample OS's marker from iSCSI: {seconds:.1f} s")

        # tgt saw our initiator log in (the ACL admits only it, and only with the CHAP secret).
        shown = target.show()
        assert INITIATOR_IQN in shown, shown
        events = [e["event"] for e in h.history(rec)]
        assert any("no image is written" in e for e in events), events[-10:]
        assert not any(chap_password in e for e in events)
        assert chap_password not in (Path(h.lab.state.dir) / "serve.log").read_text(errors="replace")
        script = h.boot_script(rec)
        # Asked from the bridge address, not the VM's lease: the CHAP-carrying script is refused.
        assert "sanboot" not in script and chap_password not in script
    finally:
        target.stop()
