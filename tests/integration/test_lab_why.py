"""`bootforge node why` on a real boot chain that stops: a UEFI VM (OVMF) inspected through the API
network-boots the lab's probe ramdisk, which has no agent, so the node waits for a lookup that never
comes. The real CLI, with the lab's credentials, says so: first in progress (the machine was just
heard), then, once the machine stayed quiet for the lab's diagnosis_quiet (45 s), stalled, at the rung the
timeline shows (kernel and initrd fetched, no lookup) with the TFTP loader fetch among the evidence.
Marked qemu, netns, slow: about 70 s, most of it the quiet period the verdict waits for."""

from __future__ import annotations

import os
import subprocess
import time

import pytest
from support.lab import BOOT_TIMEOUT, LabFactory, console_offset, wait_console
from support.service import BOOTFORGE

from bootforge.lab.lab import DIAGNOSIS_QUIET
from bootforge.lab.ramdisk import API_MARKER

pytestmark = [pytest.mark.qemu, pytest.mark.netns, pytest.mark.slow]


def test_why_names_the_rung_where_a_real_boot_stopped(make_lab: LabFactory) -> None:
    h = make_lab(vms=1, firmware="uefi")
    rec = h.vms[0]
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("BOOTFORGE_")}, **h.lab.env()}

    def why() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [BOOTFORGE, "node", "why", rec.node],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    since = console_offset(rec)
    h.verb(rec, "inspect")
    wait_console(rec, API_MARKER, BOOT_TIMEOUT, since)  # the probe ramdisk runs: it has no agent
    h.timeline_fence(rec)
    early = why()
    assert early.returncode == 0, early.stdout + early.stderr
    assert "in progress: inspect wait: waiting for the agent since" in early.stdout

    deadline = time.monotonic() + DIAGNOSIS_QUIET + 120
    while True:
        late = why()
        if late.returncode == 1 or time.monotonic() > deadline:
            break
        time.sleep(2)
    out = late.stdout
    assert late.returncode == 1, out + late.stderr
    assert "stalled: inspect wait: waiting for the agent since" in out
    assert (
        "the machine fetched the ramdisk (GET /bootforge/initrd, GET /bootforge/vmlinuz) but its agent never "
        "looked up" in out
    ), out
    assert "likely cause: the kernel or the ramdisk did not come up" in out
    assert "tftp ipxe.efi completed" in out and "inspection: network-booting the bootforge ramdisk" in out
    marked = [line for line in out.splitlines() if line.lstrip("│ ").startswith(">")]
    assert len(marked) == 1 and "http GET /bootforge/vmlinuz 200" in marked[0], out
