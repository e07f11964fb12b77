"""The lab's Redfish BMC against a real QEMU VM: sushy-tools' emulator (bootforge.lab.redfish_bmc) on
127.0.0.1, driven with curl, and the VM checked over its own QMP socket (qemu.qmp, not bootforge's
QMP code) and its serial console.

The VM is a small SeaBIOS machine with a blank disk, a NIC on a hub of its own (iPXE's ROM) and the
BMC's cdrom: enough for the firmware to show which device it booted ("Booting from Hard Disk" /
"Booting from ROM") without any network.
"""

from __future__ import annotations

import asyncio
import http.server
import json
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from qemu.qmp import QMPClient

from bootforge.drivers import qemu_machine as vm
from bootforge.lab import redfish_bmc

pytestmark = [pytest.mark.qemu, pytest.mark.slow]

PASSWORD = "lab-secret"
WAIT = 60.0  # TCG on a shared 2-core host


@dataclass
class RedfishVm:
    dir: Path
    url: str  # the system's URL
    root: str  # https://127.0.0.1:port/redfish/v1
    cert: Path
    uuid: str
    qmp: Path
    console: Path

    def curl(self, method: str, path: str, body: dict[str, Any] | None = None, user: str = "admin",
             password: str = PASSWORD) -> tuple[int, str, dict[str, str]]:  # fmt: skip
        """(status, body, headers) of one request, made by curl."""
        argv = ["curl", "-sS", "--max-time", "60", "--cacert", str(self.cert), "-u", f"{user}:{password}"]
        argv += ["-X", method, "-D", "-", "-o", str(self.dir / "body")]
        if body is not None:
            argv += ["-H", "Content-Type: application/json", "--data", json.dumps(body)]
        url = path if path.startswith("https://") else self.root + path
        out = subprocess.run([*argv, url], capture_output=True, text=True, timeout=90, check=True).stdout
        blocks = [b for b in out.replace("\r", "").split("\n\n") if b.strip()]
        lines = blocks[-1].splitlines()
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        text = (self.dir / "body").read_text() if (self.dir / "body").exists() else ""
        return int(lines[0].split()[1]), text, headers

    def system(self) -> dict[str, Any]:
        status, text, _ = self.curl("GET", self.url)
        assert status == 200, text
        return dict(json.loads(text))

    def reset(self, reset_type: str) -> None:
        status, text, _ = self.curl(
            "POST", self.url + "/Actions/ComputerSystem.Reset", {"ResetType": reset_type}
        )
        assert status == 204, text

    def boot(self, **boot: str) -> tuple[int, str]:
        status, text, _ = self.curl("PATCH", self.url, {"Boot": boot})
        return status, text

    def console_size(self) -> int:
        return self.console.stat().st_size if self.console.exists() else 0

    def wait_console(self, pattern: str, since: int) -> str:
        """The console text after `since` once it contains `pattern`."""
        deadline = time.monotonic() + WAIT
        while True:
            text = self.console.read_bytes()[since:].decode(errors="replace") if self.console.exists() else ""
            if pattern in text:
                return text
            if time.monotonic() > deadline:
                pytest.fail(f"{pattern!r} not on the console within {WAIT:.0f} s:\n{text[-1500:]}")
            time.sleep(0.3)

    def qemu_pid(self) -> int | None:
        pid = vm.read_pid(self.qmp.with_name("qmp.sock.pid"))
        return pid if pid is not None and vm.pid_alive(pid) else None


def qmp(sock: Path, command: str, args: dict[str, object] | None = None) -> Any:
    async def run() -> Any:
        client = QMPClient("test")
        await asyncio.wait_for(client.connect(str(sock)), 10)
        try:
            return await asyncio.wait_for(client.execute(command, args), 10)
        finally:
            await client.disconnect()

    return asyncio.run(run())


def bootindex(sock: Path, device: str) -> int:
    return int(qmp(sock, "qom-get", {"path": f"/machine/peripheral/{device}", "property": "bootindex"}))


def first_boot(text: str) -> str:
    """The first device SeaBIOS tried in a console excerpt."""
    starts = [(text.find(m), m) for m in ("Booting from Hard Disk", "Booting from ROM", "Booting from DVD")]
    found = sorted((i, m) for i, m in starts if i >= 0)
    assert found, text[-1500:]
    return found[0][1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def redfish_vm(tmp_path: Path) -> Iterator[RedfishVm]:
    for binary in (vm.DEFAULT_BINARY, "qemu-img", "curl"):
        if shutil.which(binary) is None:
            pytest.skip(f"needs {binary}")
    pytest.importorskip("sushy_tools", reason="needs sushy-tools (pip install 'bootforge[lab]')")
    defn = tmp_path / "vm.json"
    defn.write_text(
        json.dumps(
            {
                "name": "rf1",
                "memory_mib": 128,
                "disks": [{"path": "disk.qcow2", "format": "qcow2"}],
                "nics": [{"mac": "52:54:00:aa:00:01"}],
                "serial_log": "console.log",
            }
        )
    )
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", str(tmp_path / "disk.qcow2"), "64M"], check=True
    )
    cert, key = redfish_bmc.make_tls(tmp_path / "tls", "127.0.0.1")
    redfish_bmc.make_htpasswd(tmp_path / "htpasswd", PASSWORD)
    uuid = redfish_bmc.system_uuid(defn)
    port = _free_port()
    config = redfish_bmc.BmcConfig(
        address="127.0.0.1",
        port=port,
        cert=cert,
        key=key,
        htpasswd=tmp_path / "htpasswd",
        state_dir=tmp_path / "bmc",
        systems=[
            redfish_bmc.SystemConfig(
                name="rf1",
                uuid=uuid,
                definition=defn,
                qmp_socket=tmp_path / "qmp.sock",
                state_dir=tmp_path / "rf1",
            )
        ],
    )
    (tmp_path / "bmc.json").write_text(config.model_dump_json())
    log = tmp_path / "bmc.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "bootforge.lab.redfish_bmc", "--config", str(tmp_path / "bmc.json")],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    root = f"https://127.0.0.1:{port}/redfish/v1"
    handle = RedfishVm(
        tmp_path, f"{root}/Systems/{uuid}", root, cert, uuid, tmp_path / "qmp.sock", tmp_path / "console.log"
    )
    try:
        deadline = time.monotonic() + WAIT
        while "redfish-bmc:" not in log.read_text(errors="replace"):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the Redfish BMC did not start:\n{log.read_text(errors='replace')[-2000:]}")
            time.sleep(0.1)
        yield handle
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        pid = handle.qemu_pid()
        if pid is not None:
            asyncio.run(vm.kill_pid(pid, 5))


def test_power_and_boot_override_act_on_the_vm(redfish_vm: RedfishVm) -> None:
    r = redfish_vm
    sys_ = r.system()
    assert sys_["PowerState"] == "Off" and r.qemu_pid() is None  # off: no QEMU process at all
    assert sys_["Boot"]["BootSourceOverrideMode"] == "Legacy"  # from the definition's firmware

    assert r.boot(BootSourceOverrideTarget="Pxe", BootSourceOverrideEnabled="Continuous")[0] == 204
    since = r.console_size()
    r.reset("On")
    assert qmp(r.qmp, "query-status")["status"] == "running"
    assert bootindex(r.qmp, "nic0") == 1  # the NIC first, as asked
    assert first_boot(r.wait_console("Booting from ROM", since)) == "Booting from ROM"
    assert r.system()["PowerState"] == "On"
    # The guest's SMBIOS UUID is the Redfish system's.
    assert qmp(r.qmp, "query-uuid")["UUID"] == r.uuid

    # The disk for the next boot only, then the NIC again.
    assert r.boot(BootSourceOverrideTarget="Hdd", BootSourceOverrideEnabled="Once")[0] == 204
    assert r.system()["Boot"]["BootSourceOverrideTarget"] == "Hdd"
    since = r.console_size()
    r.reset("ForceRestart")
    assert first_boot(r.wait_console("Booting from ROM", since)) == "Booting from Hard Disk"
    assert r.system()["Boot"]["BootSourceOverrideTarget"] == "Pxe"
    assert bootindex(r.qmp, "nic0") == 1
    since = r.console_size()
    r.reset("ForceRestart")
    assert first_boot(r.wait_console("Booting from ROM", since)) == "Booting from ROM"

    # Continuous disk: applied at a plain warm reset too.
    assert r.boot(BootSourceOverrideTarget="Hdd")[0] == 204
    assert bootindex(r.qmp, "disk0") == 1
    since = r.console_size()
    r.reset("ForceRestart")
    assert first_boot(r.wait_console("Booting from ROM", since)) == "Booting from Hard Disk"

    pid = r.qemu_pid()
    assert pid is not None
    r.reset("Nmi")  # accepted by a running VM
    r.reset("ForceOff")
    assert not vm.pid_alive(pid) and r.system()["PowerState"] == "Off"


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_virtual_media_boot_mode_and_refusals(redfish_vm: RedfishVm, tmp_path: Path) -> None:
    r = redfish_vm
    # Authentication and identities, as sushy-tools answers them.
    assert r.curl("GET", r.url, password="wrong")[0] == 401
    assert r.curl("GET", "/Systems/no-such-vm")[0] == 404
    status, _, headers = r.curl("GET", "/Systems/rf1")
    assert status == 307 and headers["location"].endswith(f"/Systems/{r.uuid}")
    assert r.boot(BootSourceOverrideTarget="Floppy")[0] == 400
    status, text, _ = r.curl("GET", "/Systems/" + r.uuid + "/VirtualMedia")
    assert [m["@odata.id"].rsplit("/", 1)[1] for m in json.loads(text)["Members"]] == ["Cd"]

    r.reset("On")
    media = tmp_path / "www"
    media.mkdir()
    (media / "boot.iso").write_bytes(b"\x01" * 65536)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), lambda *a: _Quiet(*a, directory=str(media)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        image = f"http://127.0.0.1:{server.server_address[1]}/boot.iso"
        body = {"Image": image, "Inserted": True, "WriteProtected": True}
        status, text, _ = r.curl("POST", r.url + "/VirtualMedia/Cd/Actions/VirtualMedia.InsertMedia", body)
        assert status == 204, text
    finally:
        server.shutdown()
        server.server_close()
    cd = [b for b in qmp(r.qmp, "query-block") if b.get("qdev", "").endswith("bmc-cd")]
    assert len(cd) == 1 and "inserted" in cd[0], cd
    inserted = Path(cd[0]["inserted"]["file"])
    assert inserted.read_bytes() == b"\x01" * 65536 and (tmp_path / "bmc") in inserted.parents
    status, text, _ = r.curl("GET", r.url + "/VirtualMedia/Cd")
    assert json.loads(text)["Inserted"] is True and json.loads(text)["Image"] == image

    status, text, _ = r.curl("POST", r.url + "/VirtualMedia/Cd/Actions/VirtualMedia.EjectMedia", {})
    assert status == 204, text
    cd = [b for b in qmp(r.qmp, "query-block") if b.get("qdev", "").endswith("bmc-cd")]
    assert "inserted" not in cd[0], cd

    try:
        vm.find_ovmf()
    except vm.QemuError:
        pytest.skip("needs OVMF (Debian package ovmf) for the UEFI half")
    assert r.boot(BootSourceOverrideMode="UEFI")[0] == 204
    assert r.system()["Boot"]["BootSourceOverrideMode"] == "UEFI"
    old = r.qemu_pid()
    r.reset("ForceRestart")  # a new firmware: a new process
    new = r.qemu_pid()
    assert new is not None and new != old
    assert b"if=pflash" in Path(f"/proc/{new}/cmdline").read_bytes()
    # Secure Boot is the BMC's to switch (it picks the firmware of the next power-on; test_redfish_secure_boot
    # boots nothing): the switch is accepted and read back.
    status, text, _ = r.curl("PATCH", r.url + "/SecureBoot", {"SecureBootEnable": True})
    assert status == 204, text
    status, text, _ = r.curl("GET", r.url + "/SecureBoot")
    assert status == 200 and json.loads(text)["SecureBootEnable"] is True, text
    r.reset("ForceOff")


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # sushy's own imports
def test_sushy_ironics_client_drives_the_vm(redfish_vm: RedfishVm) -> None:
    sushy = pytest.importorskip("sushy", reason="needs sushy (the test extra)")
    r = redfish_vm
    conn = sushy.Sushy(r.root, username="admin", password=PASSWORD, verify=str(r.cert))
    system = conn.get_system(f"/redfish/v1/Systems/{r.uuid}")
    assert system.name == "rf1" and system.power_state == sushy.PowerState.OFF
    allowed = system.get_allowed_reset_system_values()
    assert {sushy.ResetType.ON, sushy.ResetType.FORCE_OFF, sushy.ResetType.FORCE_RESTART} <= set(allowed)

    system.set_system_boot_options(sushy.BootSource.PXE, enabled=sushy.BootSourceOverrideEnabled.CONTINUOUS)
    system.set_system_boot_options(sushy.BootSource.HDD, enabled=sushy.BootSourceOverrideEnabled.ONCE)
    since = r.console_size()
    system.reset_system(sushy.ResetType.ON)
    assert qmp(r.qmp, "query-status")["status"] == "running"
    assert first_boot(r.wait_console("Booting from ROM", since)) == "Booting from Hard Disk"
    system.refresh()
    assert system.power_state == sushy.PowerState.ON
    assert system.boot.target == sushy.BootSource.PXE  # the one-time disk is spent
    assert system.boot.mode == sushy.BootSourceOverrideMode.LEGACY

    system.reset_system(sushy.ResetType.FORCE_OFF)
    system.refresh()
    assert system.power_state == sushy.PowerState.OFF and r.qemu_pid() is None
