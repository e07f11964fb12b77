"""Rescue in the lab: a deployed QEMU VM is rescued with a password, the test logs in over the
provisioning network (OpenSSH's client, from inside the lab's namespace, against the ramdisk's
dropbear) and reads the deployed disk; unrescue boots the sample OS from that disk again.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest
from support.lab import RAMDISK_TIMEOUT, LabFactory, LabHandle, console_offset, wait_console

from bootforge.lab import sample_os
from bootforge.lab.lab import VmRecord
from bootforge.lab.sample_os import build_test_os, missing_tools

pytestmark = [pytest.mark.qemu, pytest.mark.slow, pytest.mark.netns]

PASSWORD = f"rescue-{uuid.uuid4().hex[:12]}"


def ssh(
    h: LabHandle, address: str, password: str, command: str, work: Path
) -> subprocess.CompletedProcess[str]:
    """`command` on the rescued machine as root, the password given through SSH_ASKPASS (no sshpass)."""
    askpass = work / "askpass.sh"
    askpass.write_text(f"#!/bin/sh\necho '{password}'\n")
    askpass.chmod(0o700)
    env = {**os.environ, "SSH_ASKPASS": str(askpass), "SSH_ASKPASS_REQUIRE": "force", "DISPLAY": ":0"}
    argv = [
        "ip", "netns", "exec", h.lab.state.netns, "ssh", "-F", "/dev/null",
        "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
        "-o", "PreferredAuthentications=password", "-o", "PubkeyAuthentication=no",
        "-o", "NumberOfPasswordPrompts=1", "-o", "ConnectTimeout=20",
        f"root@{address}", command,
    ]  # fmt: skip
    return subprocess.run(
        argv, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120
    )


def ramdisk_address(h: LabHandle, rec: VmRecord) -> str:
    """The address the rescue ramdisk's agent looked up from: the one bootforge's DHCP leased it."""
    events = [e["event"] for e in h.history(rec)]
    looked_up = [e.split(" from ", 1)[1] for e in events if e.startswith("agent looked up from ")]
    assert looked_up, events[-10:]
    return looked_up[-1]


def test_rescue_login_reads_the_disk_and_unrescue_boots_the_os(make_lab: LabFactory, tmp_path: Path) -> None:
    missing = missing_tools() + [t for t in ("ssh",) if shutil.which(t) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)}")
    image = build_test_os()
    h = make_lab(vms=1, firmware="bios", memory_mib=768, ramdisk="agent")
    rec = h.vms[0]
    node = rec.node
    assert h.api.post("/v1/images", json={"name": "sample-os", "source": str(image)}).status_code == 201
    assert (
        h.api.patch(
            f"/v1/nodes/{node}", json=[{"op": "add", "path": "/rescue_interface", "value": "agent"}]
        ).status_code
        == 200
    )
    h.verb(rec, "provide")
    h.wait_state(rec, "available", RAMDISK_TIMEOUT)
    h.deploy_sample_os(rec, "sample-os", f"rescue me {uuid.uuid4().hex[:8]}", 120)

    h.verb(rec, "rescue", rescue_password=PASSWORD)
    rescued = h.wait_state(rec, "rescue", 180)
    assert "rescue_password" not in rescued["instance_info"]
    address = ramdisk_address(h, rec)

    wrong = ssh(h, address, PASSWORD + "x", "true", tmp_path)
    assert wrong.returncode == 255 and "Permission denied" in wrong.stderr, (wrong.returncode, wrong.stderr)
    out = ssh(h, address, PASSWORD, "cat /proc/partitions; sfdisk -d /dev/vda", tmp_path)
    assert out.returncode == 0, out.stderr
    # The deployed disk, as the sample OS left it: its partitions are there, read by the rescue system.
    assert "vda1" in out.stdout and "/dev/vda1 :" in out.stdout, out.stdout
    events = [e["event"] for e in h.history(rec)]
    assert not any(PASSWORD in e for e in events)

    since = console_offset(rec)
    h.verb(rec, "unrescue")
    h.wait_state(rec, "active", 180)
    wait_console(rec, sample_os.BOOTED_MARKER, 180, since)
