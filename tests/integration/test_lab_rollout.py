"""Rolling re-provisioning on QEMU VMs (#15's Verify): 3 deployed VMs redeployed in batches of 2 with
drain and undrain hooks (a full batch, then a partial one), then a second rollout whose drain hook
fails on the third node.

The hooks are a shell script in the lab's serve config (rollouts.hooks): each call appends
"<phase> <node name>" to a log, and a drain exits 3 while a file fail-drain-<node name> exists (the
load balancer refusing). The first rollout must call them in order: drain n -> n active again ->
undrain n, never more than 2 nodes drained at once; every VM is network-booted into the ramdisk from
`active` (the qemu driver's one-time pxe on a running SeaBIOS VM, test_qemu_reboot_once.py), written
with the new image and boots it from its disk. The second stops at the third node: `bootforge fleet
status` says why, and the third node's timeline shows no second rebuild.

TCG, 3 VMs on the shared 2-core machine: the times of each phase are printed.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from support.lab import RAMDISK_TIMEOUT, LabFactory, LabHandle, console_offset, wait_console
from support.service import BOOTFORGE

from bootforge.lab import lab as lab_module
from bootforge.lab import sample_os
from bootforge.lab.lab import LabState
from bootforge.lab.sample_os import build_test_os, missing_tools

pytestmark = [pytest.mark.qemu, pytest.mark.slow, pytest.mark.netns]

HOOK = """#!/bin/sh
echo "$1 $BOOTFORGE_NODE_NAME" >> {dir}/hooks.log
[ -e {dir}/fail-$1-$BOOTFORGE_NODE_NAME ] || exit 0
echo "balancer refused $BOOTFORGE_NODE_NAME" >&2
exit 3
"""
ROLLOUT_CONFIG = """
[rollouts]
poll_interval = 1
[[rollouts.hooks]]
name = "drain"
command = ["{script}", "drain"]
timeout = 60
[[rollouts.hooks]]
name = "undrain"
command = ["{script}", "undrain"]
timeout = 60
"""
NAMES = [f"lab-vm{i}" for i in range(1, 4)]


def test_rolling_redeploy_of_three_vms_then_a_drain_hook_failing_on_the_third(
    make_lab: LabFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = missing_tools()
    if missing:
        pytest.skip(f"needs {', '.join(missing)} to build the sample OS image")
    image = build_test_os()
    script = tmp_path / "hook.sh"
    script.write_text(HOOK.format(dir=tmp_path))
    script.chmod(0o755)
    # The lab's serve.toml gets the hooks (they live in the configuration only, never in the API).
    base_config = lab_module.serve_config

    def with_hooks(state: LabState, boot_root: Path) -> str:
        return base_config(state, boot_root) + ROLLOUT_CONFIG.format(script=script)

    monkeypatch.setattr(lab_module, "serve_config", with_hooks)
    started = time.monotonic()
    h = make_lab(vms=3, firmware="bios", memory_mib=768, ramdisk="agent")
    for name in ("sample-os", "sample-os-v2"):
        r = h.api.post("/v1/images", json={"name": name, "source": str(image)})
        assert r.status_code == 201, r.text
    lab_up = time.monotonic() - started

    # All three deployed at once, as an operator's first rollout of a rack.
    started = time.monotonic()
    for rec in h.vms:
        patch = [{"op": "add", "path": "/instance_info/image_source", "value": "sample-os"}]
        assert h.api.patch(f"/v1/nodes/{rec.node}", json=patch).status_code == 200
        h.verb(rec, "provide")
    for rec in h.vms:
        h.wait_state(rec, "available", RAMDISK_TIMEOUT)
    for rec in h.vms:
        h.verb(rec, "active")
    for rec in h.vms:
        h.wait_state(rec, "active", RAMDISK_TIMEOUT)
    deployed = time.monotonic() - started
    print(f"\nlab up {lab_up:.0f} s; 3 VMs provided and deployed at once {deployed:.0f} s")

    # --- the rolling redeploy ---------------------------------------------------------------------
    consoles = {rec.name: console_offset(rec) for rec in h.vms}
    started = time.monotonic()
    first = start_rollout(h, "sample-os-v2")
    assert first["batch_size"] == 2 and [n["name"] for n in first["nodes"]] == NAMES
    done = wait_rollout(h, first["uuid"], lambda r: r["state"] != "running", 3 * RAMDISK_TIMEOUT)
    rollout_one = time.monotonic() - started
    print(f"rollout of 3 VMs in batches of 2: {rollout_one:.0f} s")
    assert done["state"] == "done", done
    assert done["counts"] == {"done": 3} and done["failures"] == 0, done

    log = hook_log(tmp_path)
    assert len(log) == 6, log
    assert log[:2] == ["drain lab-vm1", "drain lab-vm2"], log
    assert set(log[2:4]) == {"undrain lab-vm1", "undrain lab-vm2"}, log
    assert log[4:6] == ["drain lab-vm3", "undrain lab-vm3"], log
    assert max_drained(log) == 2
    for rec in h.vms:
        node = h.node(rec)
        assert node["provision_state"] == "active" and node["instance_info"]["image_source"] == "sample-os-v2"
        events = [e["event"] for e in h.history(rec)]
        assert rebuilds(events) == 1, rec.name
        # drain n -> the rebuild -> network-booted ramdisk -> n active again -> undrain n
        drained = index_of(events, "drain hook drain done", rec.name)
        rebuilt = index_of(events, "(rebuild)", rec.name, after=drained)
        looked_up = index_of(events, "agent looked up from", rec.name, after=rebuilt)
        active = index_of(events, "-> active", rec.name, after=looked_up)
        index_of(events, "undrain hook undrain done", rec.name, after=active)
        assert not [e for e in events[rebuilt:] if "boot script refused" in e], rec.name
        # ... and the new image boots from the disk (the last batch may still be booting it).
        wait_console(rec, sample_os.BOOTED_MARKER, 180, consoles[rec.name])

    # --- a drain hook that fails on the third node ------------------------------------------------
    (tmp_path / "fail-drain-lab-vm3").touch()
    started = time.monotonic()
    second = start_rollout(h, "sample-os")
    stopped = wait_rollout(h, second["uuid"], lambda r: r["state"] != "running", 2 * RAMDISK_TIMEOUT)
    rollout_two = time.monotonic() - started
    assert stopped["state"] == "failed", stopped
    assert {n["name"]: n["status"] for n in stopped["nodes"]} == {
        "lab-vm1": "done",
        "lab-vm2": "done",
        "lab-vm3": "failed",
    }, stopped
    again = hook_log(tmp_path)[6:]
    assert again[:2] == ["drain lab-vm1", "drain lab-vm2"], again
    assert set(again[2:4]) == {"undrain lab-vm1", "undrain lab-vm2"}, again
    assert again[4:] == ["drain lab-vm3"], again  # refused: no rebuild, no undrain
    images = ("sample-os", "sample-os", "sample-os-v2")
    for rec, image_now, rebuilt_times in zip(h.vms, images, (2, 2, 1), strict=True):
        node = h.node(rec)
        assert node["provision_state"] == "active", rec.name
        assert node["instance_info"]["image_source"] == image_now, rec.name
        assert rebuilds([e["event"] for e in h.history(rec)]) == rebuilt_times, rec.name

    env = {**{k: v for k, v in os.environ.items() if not k.startswith("BOOTFORGE_")}, **h.lab.env()}
    status = subprocess.run(
        [BOOTFORGE, "fleet", "status", second["uuid"]],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert status.returncode == 0, status.stderr
    out = " ".join(status.stdout.split())
    assert "is failed" in out and "drain hook failed on lab-vm3" in out, status.stdout
    assert "exited with status 3" in out and "balancer refused lab-vm3" in out, status.stdout
    print(f"rollout stopped by the drain hook on the third node: {rollout_two:.0f} s")


def start_rollout(h: LabHandle, image: str) -> dict[str, Any]:
    body = {
        "selector": {"name_prefix": "lab-vm"},
        "image": image,
        "batch": 2,
        "drain_hook": "drain",
        "undrain_hook": "undrain",
    }
    r = h.api.post("/v1/rollouts", json=body)
    assert r.status_code == 201, r.text
    rollout: dict[str, Any] = r.json()
    return rollout


def wait_rollout(
    h: LabHandle, uuid: str, done: Callable[[dict[str, Any]], bool], timeout: float
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        r = h.api.get(f"/v1/rollouts/{uuid}")
        assert r.status_code == 200, r.text
        rollout: dict[str, Any] = r.json()
        if done(rollout):
            return rollout
        if time.monotonic() > deadline:
            pytest.fail(f"rollout still {rollout['state']} after {timeout:.0f} s: {rollout}")
        time.sleep(2)


def hook_log(directory: Path) -> list[str]:
    path = directory / "hooks.log"
    return path.read_text().splitlines() if path.exists() else []


def max_drained(log: list[str]) -> int:
    drained: set[str] = set()
    most = 0
    for line in log:
        phase, name = line.split()
        if phase == "drain":
            drained.add(name)
        else:
            drained.discard(name)
        most = max(most, len(drained))
    return most


def rebuilds(events: list[str]) -> int:
    return sum("(rebuild)" in e for e in events)


def index_of(events: list[str], text: str, name: str, after: int = -1) -> int:
    for i in range(after + 1, len(events)):
        if text in events[i]:
            return i
    pytest.fail(f"{name}: no {text!r} on the timeline after event {after}:\n" + "\n".join(events[-30:]))
