"""The whole agent path on loopback, no VM: a real `bootforge serve`, the real agent process, a disk file.

The node is fake-hardware (its power and boot device are remembered, not real) with the agent's
interfaces, so everything else is real: lookup and tokens (a new boot id, hence a new lookup, at every
"reboot"), the image catalogue and HTTP server, streaming, checksums, the config drive, disk erasure.
The same agent then runs in the ramdisk under QEMU in tests/integration/test_lab_deploy.py.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from support.disk_check import find_config_drive, is_blank_metadata, partition_table
from support.service import LATEST, Served, free_port, served

from bootforge import boot_token

MAC = "52:54:00:12:34:56"
MiB = 1024**2


def _need(*binaries: str) -> None:
    for b in binaries:
        if shutil.which(b) is None:
            pytest.skip(f"needs {b} (Debian packages fdisk, util-linux, zstd)")


@pytest.fixture
def bf(tmp_path: Path) -> Iterator[Served]:
    _need("sfdisk", "wipefs", "zstd")
    boot = tmp_path / "state" / "boot" / "bootforge"
    boot.mkdir(parents=True)
    # The pxe boot interface checks that a ramdisk exists; no machine boots it in this test.
    (boot / "vmlinuz").write_bytes(b"not booted in this test")
    (boot / "initrd").write_bytes(b"not booted in this test")
    env = {
        "BOOTFORGE_ENABLED_HARDWARE_TYPES": '["fake-hardware"]',
        "BOOTFORGE_NETBOOT__ADDRESS": "127.0.0.1",
        "BOOTFORGE_NETBOOT__HTTP": "true",
        "BOOTFORGE_NETBOOT__HTTP_PORT": str(free_port()),
        "BOOTFORGE_AGENT__HANDOFF_WINDOW": "1",
        "BOOTFORGE_AGENT__LLDP_WAIT": "0",
        "BOOTFORGE_AGENT__POLL_TIMEOUT": "5",
        "BOOTFORGE_TIMEOUT_CHECK_INTERVAL": "1",
    }
    yield from served(tmp_path, env=env)


def api(bf: Served) -> httpx.Client:
    return httpx.Client(base_url=bf.url, headers=LATEST, timeout=30)


def wait_state(c: httpx.Client, node: str, want: str, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        n = c.get(f"/v1/nodes/{node}").json()
        if n["provision_state"] == want and n["reservation"] is None:
            return dict(n)
        if n["provision_state"].endswith("failed") and want != n["provision_state"]:
            pytest.fail(f"node went {n['provision_state']}: {n['last_error']}")
        if time.monotonic() > deadline:
            pytest.fail(f"node is {n['provision_state']}, not {want}, after {timeout} s: {n['last_error']}")
        time.sleep(0.3)


def verb(c: httpx.Client, node: str, target: str, **body: Any) -> None:
    r = c.put(f"/v1/nodes/{node}/states/provision", json={"target": target, **body})
    assert r.status_code == 202, r.text


def make_image(path: Path) -> bytes:
    """An 8 MiB raw disk: an MBR with one partition, some data, and zeros."""
    with open(path, "wb") as f:
        f.truncate(8 * MiB)
    subprocess.run(["sfdisk", "-q", str(path)], input=b"2048,8192,83\n", check=True, capture_output=True)
    with open(path, "r+b") as f:
        f.seek(2 * MiB)
        f.write(os.urandom(3 * MiB))
    return path.read_bytes()


class Machine:
    """The node's machine as its agent sees it: at each new ramdisk boot (a new boot id) the agent
    restarts with the boot token from the boot script bootforge's HTTP boot server hands out for its
    MAC, as a machine rebooting into the ramdisk gets it from its kernel command line."""

    def __init__(self, bf: Served, node: str, disk: Path, log: Path, mac: str = MAC) -> None:
        self.bf, self.node, self.disk, self.log, self.mac = bf, node, disk, log, mac
        self.script_url = f"http://127.0.0.1:{bf.env['BOOTFORGE_NETBOOT__HTTP_PORT']}/boot/ipxe?mac={mac}"
        self.agent: subprocess.Popen[bytes] | None = None
        self.boots: list[str] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Machine:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(30)
        self._halt()

    def _run(self) -> None:
        with httpx.Client(base_url=self.bf.url, headers=LATEST, timeout=30) as c:
            while not self.stop.wait(0.2):
                boot = c.get(f"/v1/nodes/{self.node}").json()["driver_internal_info"].get("agent_boot")
                if not boot or (self.boots and self.boots[-1] == boot):
                    continue
                # The netboot view reads the new boot id within its refresh: until then the script
                # is refused or carries the last boot's token, so wait for this boot's.
                want = boot_token.for_boot(self.bf.state_dir / "secret.key", self.node, boot)
                if f"bootforge.boot_token={want}" not in httpx.get(self.script_url, timeout=10).text:
                    continue
                self._halt()
                self.boots.append(boot)
                argv = [sys.executable, "-m", "bootforge.agent", "--api", self.bf.url, "--node", self.node]
                argv += ["--mac", self.mac, "--boot-token", want, "--disk", str(self.disk)]
                with open(self.log, "ab") as out:
                    self.agent = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)

    def _halt(self) -> None:
        if self.agent is not None and self.agent.poll() is None:
            self.agent.terminate()
            self.agent.wait(10)


def test_inspect_clean_deploy_undeploy_with_the_real_agent(bf: Served, tmp_path: Path) -> None:
    image = make_image(tmp_path / "tiny.raw")
    disk = tmp_path / "disk.img"
    with open(disk, "wb") as f:
        f.truncate(128 * MiB)
    # Something for cleaning to erase: a GPT, at both ends of the disk.
    subprocess.run(
        ["sfdisk", "-q", "--label", "gpt", str(disk)], input=b",16M\n", check=True, capture_output=True
    )
    agent_log = tmp_path / "agent.log"
    with api(bf) as c:
        # Uploaded, as `bootforge image add` does: this bootforge imports no host paths.
        r = c.put("/v1/images/tiny/file", content=(tmp_path / "tiny.raw").read_bytes())
        assert r.status_code == 201, r.text
        assert r.json()["disk_format"] == "raw"
        body = {"driver": "fake-hardware", "name": "loop-1", "boot_interface": "pxe",
                "deploy_interface": "direct", "inspect_interface": "agent"}  # fmt: skip
        node = c.post("/v1/nodes", json=body).json()["uuid"]
        assert c.post("/v1/ports", json={"node_uuid": node, "address": MAC}).status_code == 201
        verb(c, node, "manage")
        wait_state(c, node, "manageable")
        try:
            with Machine(bf, node, disk, agent_log) as machine:
                verb(c, node, "inspect")
                inspected = wait_state(c, node, "manageable")
                inventory = c.get(f"/v1/nodes/{node}/inventory").json()["inventory"]
                assert [d["size"] for d in inventory["disks"]] == [128 * MiB]
                assert inventory["cpu"]["count"] == os.cpu_count()
                assert inspected["properties"]["cpus"] == os.cpu_count()

                verb(c, node, "provide")
                wait_state(c, node, "available")
                blank = is_blank_metadata(disk)
                assert blank, blank.found

                user_data = "#cloud-config\n# written by test_agent_deploy_loopback\n"
                patch = [{"op": "add", "path": "/instance_info/image_source", "value": "tiny"}]
                assert c.patch(f"/v1/nodes/{node}", json=patch).status_code == 200
                verb(c, node, "active", configdrive={"user_data": user_data})
                active = wait_state(c, node, "active")
                assert active["power_state"] == "power on"
                written = disk.read_bytes()
                # The image's boot code and first partition, and all its data; the MBR's second entry is
                # now the config drive's partition, which the agent appended at the end of the disk.
                assert written[: 446 + 16] == image[: 446 + 16]
                assert written[MiB : len(image)] == image[MiB:]
                parts = partition_table(disk)["mbr"]["partitions"]
                assert [p["type"] for p in parts] == [0x83, 0x83]
                assert (parts[1]["start"] + parts[1]["sectors"]) * 512 > 120 * MiB  # at the disk's end
                assert find_config_drive(disk) == user_data.encode()
                history = [e["event"] for e in c.get(f"/v1/nodes/{node}/history").json()["history"]]
                assert any("write_image succeeded" in e for e in history)
                assert any("handoff seen" in e for e in history)

                verb(c, node, "deleted")
                wait_state(c, node, "available")
                blank = is_blank_metadata(disk)
                assert blank, blank.found

                # A wrong checksum: the deploy fails naming both digests, the partition table is left alone.
                good = hashlib.sha256(image).hexdigest()
                wrong = "0" * 64
                # (undeploy emptied instance_info, as Ironic does)
                patch = [
                    {"op": "add", "path": "/instance_info/image_source", "value": "tiny"},
                    {"op": "add", "path": "/instance_info/image_checksum", "value": wrong},
                ]
                assert c.patch(f"/v1/nodes/{node}", json=patch).status_code == 200
                before = partition_table(disk)
                verb(c, node, "active")
                failed = wait_state(c, node, "deploy failed")
                assert wrong in failed["last_error"] and good in failed["last_error"], failed["last_error"]
                assert partition_table(disk) == before
                # A new boot, hence a new token, for each operation: inspect, clean, deploy, clean, deploy.
                assert len(set(machine.boots)) == len(machine.boots) >= 4, machine.boots
        finally:
            print(agent_log.read_text()[-3000:] if agent_log.exists() else "no agent log")
