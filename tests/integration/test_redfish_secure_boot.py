"""The redfish hardware type turns Secure Boot on and off as the node asks (issue #12).

Against the lab's Redfish BMC (sushy-tools' app with the QMP systems driver; the VM stays off, so no
QEMU runs) over TLS on 127.0.0.1; the library `sushy` reads the SecureBoot resource independently,
and the BMC's derived VM definition shows which OVMF the next power-on starts. A BMC without a
SecureBoot resource is sushy-tools' own emulator with the "vmedia" feature set.
"""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from support.processes import stop_process

from bootforge.drivers import qemu_machine as vm
from bootforge.drivers.base import updated_internal
from bootforge.drivers.redfish import RedfishManagement
from bootforge.drivers.redfish.boot import SECURE_BOOT_SET, RedfishPxeBoot
from bootforge.errors import DriverError
from bootforge.lab import redfish_bmc

pytest.importorskip("sushy_tools", reason="sushy-tools (the 'lab' extra) is not installed")
sushy = pytest.importorskip("sushy", reason="the sushy library is not installed")

# sushy-tools' app imports webob, which imports cgi; sushy's own imports warn too.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

PASSWORD = "bmc-pw"
SECURE = {"capabilities": "boot_mode:uefi,secure_boot:true"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Bmc:
    url: str
    ca: Path
    system: str  # the ComputerSystem path
    definition: Path  # what the BMC starts the VM from at its next power-on

    def driver_info(self) -> dict[str, Any]:
        return {
            "redfish_address": self.url,
            "redfish_username": redfish_bmc.USERNAME,
            "redfish_password": PASSWORD,
            "redfish_verify_ca": str(self.ca),
            "redfish_timeout": 10,
        }

    def sushy_secure_boot(self) -> bool:
        """SecureBootEnable as the sushy library reads it."""
        conn = sushy.Sushy(
            self.url + "/redfish/v1/", username=redfish_bmc.USERNAME, password=PASSWORD, verify=str(self.ca)
        )
        return bool(conn.get_system(self.system).secure_boot.enabled)

    def next_boot(self) -> dict[str, Any]:
        doc: dict[str, Any] = json.loads(self.definition.read_text())
        return doc


@pytest.fixture(scope="module")
def lab_bmc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bmc]:
    try:
        vm.find_ovmf(vm.OVMF_SECURE_BOOT_CANDIDATES)
    except vm.QemuError as e:
        pytest.skip(f"needs OVMF with Microsoft's keys (Debian package ovmf): {e}")
    from werkzeug.serving import make_server

    work = tmp_path_factory.mktemp("labbmc")
    definition = work / "vm1.json"
    definition.write_text(
        json.dumps(
            {
                "name": "vm1",
                "boot_mode": "uefi",
                "disks": [{"path": "disk.qcow2", "format": "qcow2"}],
                "nics": [{"mac": "52:54:00:77:00:51", "tap": "tap-sb"}],
            }
        )
    )
    system = redfish_bmc.SystemConfig(
        name="vm1",
        uuid=redfish_bmc.system_uuid(definition),
        definition=definition,
        qmp_socket=work / "qmp.sock",  # nothing listens: the VM reads as off
        state_dir=work / "bmc" / "vm1",
    )
    cert, key = redfish_bmc.make_tls(work, "127.0.0.1", days=1)
    redfish_bmc.make_htpasswd(work / "htpasswd", PASSWORD)
    config = redfish_bmc.BmcConfig(
        address="127.0.0.1",
        port=_free_port(),
        cert=cert,
        key=key,
        htpasswd=work / "htpasswd",
        state_dir=work / "bmc",
        systems=[system],
    )
    saved_tempdir = tempfile.tempdir
    app = redfish_bmc.build_app(config)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(cert), str(key))
    server = make_server("127.0.0.1", config.port, app, threaded=True, ssl_context=context)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Bmc(
            f"https://127.0.0.1:{config.port}",
            cert,
            f"/redfish/v1/Systems/{system.uuid}",
            system.state_dir / "vm.json",
        )
    finally:
        server.shutdown()
        thread.join(10)
        tempfile.tempdir = saved_tempdir


@dataclass
class Task:
    driver_info: dict[str, Any]
    properties: dict[str, Any] = field(default_factory=dict)
    provision_state: str = "deploying"
    driver_internal_info: dict[str, Any] = field(default_factory=dict)
    events: list[str] = field(default_factory=list)
    driver: Any = None

    def __post_init__(self) -> None:
        async def no_volume(task: Any) -> None:
            return None

        self.driver = SimpleNamespace(
            management=RedfishManagement(30.0), storage=SimpleNamespace(boot_volume=no_volume)
        )

    @property
    def node(self) -> Any:
        return self

    def set_internal(self, **values: Any) -> None:
        self.driver_internal_info = updated_internal(self.driver_internal_info, values)

    async def record(self, event_type: str, message: str, severity: str = "info") -> None:
        self.events.append(f"{event_type}: {message}")


def boot() -> RedfishPxeBoot:
    return RedfishPxeBoot(SimpleNamespace())  # type: ignore[arg-type]


async def test_deploy_turns_secure_boot_on_and_tear_down_turns_it_off(lab_bmc: Bmc) -> None:
    task = Task(lab_bmc.driver_info(), dict(SECURE))
    assert lab_bmc.sushy_secure_boot() is False
    await boot().prepare_ramdisk(task)  # the deploy's ramdisk boot: before the power-on
    assert lab_bmc.sushy_secure_boot() is True
    assert task.driver_internal_info[SECURE_BOOT_SET] is True
    nxt = lab_bmc.next_boot()
    assert nxt["secure_boot"] is True and nxt["machine"] == "q35,smm=on"
    assert any("Secure Boot turned on at https://127.0.0.1" in e for e in task.events)
    task.provision_state = "wait call-back"
    await boot().prepare_instance(task)  # already on: nothing changes, still remembered
    assert lab_bmc.sushy_secure_boot() is True and task.driver_internal_info[SECURE_BOOT_SET] is True
    task.provision_state = "deleting"
    await boot().clean_up_instance(task)
    assert lab_bmc.sushy_secure_boot() is False
    assert SECURE_BOOT_SET not in task.driver_internal_info
    assert lab_bmc.next_boot()["secure_boot"] is False
    # Cleaning after the tear-down boots the ramdisk without turning it on again.
    task.provision_state = "cleaning"
    await boot().prepare_ramdisk(task)
    assert lab_bmc.sushy_secure_boot() is False


async def test_the_operators_own_secure_boot_stays_on_and_other_nodes_are_left_alone(lab_bmc: Bmc) -> None:
    mine = Task(lab_bmc.driver_info(), dict(SECURE))
    await RedfishManagement(30.0).set_secure_boot_state(mine, True)  # as an operator would have
    await boot().prepare_instance(mine)
    assert SECURE_BOOT_SET not in mine.driver_internal_info
    await boot().clean_up_instance(mine)
    assert lab_bmc.sushy_secure_boot() is True  # not bootforge's to turn off
    await RedfishManagement(30.0).set_secure_boot_state(mine, False)
    plain = Task(lab_bmc.driver_info(), {"capabilities": "boot_mode:uefi"})
    await boot().prepare_ramdisk(plain)
    await boot().prepare_instance(plain)
    assert lab_bmc.sushy_secure_boot() is False and plain.events == []


@pytest.fixture(scope="module")
def bmc_without_secure_boot(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """sushy-tools' emulator (fake systems) with the "vmedia" feature set: no SecureBoot resource."""
    work = tmp_path_factory.mktemp("nosb")
    cert, key = redfish_bmc.make_tls(work, "127.0.0.1", days=1)
    redfish_bmc.make_htpasswd(work / "htpasswd", PASSWORD)
    port = _free_port()
    systems = [
        {"uuid": "5e1a0000-0000-4000-8000-00000000005b", "name": "n", "power_state": "Off", "nics": []}
    ]
    conf = work / "emulator.conf"
    conf.write_text(
        f"SUSHY_EMULATOR_LISTEN_IP = '127.0.0.1'\nSUSHY_EMULATOR_LISTEN_PORT = {port}\n"
        f"SUSHY_EMULATOR_SSL_CERT = '{cert}'\nSUSHY_EMULATOR_SSL_KEY = '{key}'\n"
        f"SUSHY_EMULATOR_AUTH_FILE = '{work / 'htpasswd'}'\nSUSHY_EMULATOR_FAKE_DRIVER = True\n"
        f"SUSHY_EMULATOR_FEATURE_SET = 'vmedia'\nSUSHY_EMULATOR_STATE_DIR = '{work / 'state'}'\n"
        f"SUSHY_EMULATOR_FAKE_SYSTEMS = {systems!r}\n"
    )
    log = (work / "emulator.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "sushy_tools.emulator.main", "--config", str(conf)], stdout=log, stderr=log
    )
    url = f"https://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:  # until the service root answers
            assert proc.poll() is None, (work / "emulator.log").read_text()[-2000:]
            try:
                if httpx.get(url + "/redfish/v1/", verify=ssl.create_default_context(cafile=cert)).is_success:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "sushy-emulator did not answer within 30 s"
            time.sleep(0.2)
        yield f"{url}|{cert}"
    finally:
        stop_process(proc)
        log.close()


async def test_a_bmc_without_secure_boot_fails_the_deploy_naming_it(bmc_without_secure_boot: str) -> None:
    url, ca = bmc_without_secure_boot.split("|")
    info = {
        "redfish_address": url,
        "redfish_username": redfish_bmc.USERNAME,
        "redfish_password": PASSWORD,
        "redfish_verify_ca": ca,
    }
    task = Task(info, dict(SECURE))
    with pytest.raises(DriverError, match=f"the BMC at {url} has no SecureBoot resource") as e:
        await boot().prepare_ramdisk(task)
    assert PASSWORD not in str(e.value)
    # A node that does not ask for Secure Boot deploys as before on the same BMC.
    assert await RedfishManagement(30.0).get_secure_boot_state(Task(info)) is None
