"""The redfish hardware type against sushy-tools' sushy-emulator (fake driver) on 127.0.0.1 over TLS
with basic auth from a bcrypt htpasswd: a Redfish service bootforge did not write. curl reads the
emulator independently to check what bootforge changed. Failure paths go through a small
fault-injecting proxy in front of the same emulator.

The fake driver applies power changes 1-11 s after the request, so power tests wait on the state.
"""

from __future__ import annotations

import asyncio
import http.server
import json
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from support.processes import stop_process

from bootforge.drivers import base
from bootforge.drivers.base import updated_internal
from bootforge.drivers.redfish import RedfishClient, RedfishManagement, RedfishPower
from bootforge.errors import DriverError
from bootforge.lab.redfish_bmc import make_tls

pytestmark = pytest.mark.slow

UUID = "27946b59-9e44-4fa7-8e91-00000000b007"
USER, PASSWORD = "admin", "emulator-pw"
POWER_TIMEOUT = 30.0  # the fake driver takes up to 11 s


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Emulator:
    url: str
    ca: Path
    pid: int

    def driver_info(self, **extra: Any) -> dict[str, Any]:
        info = {
            "redfish_address": self.url,
            "redfish_username": USER,
            "redfish_password": PASSWORD,
            "redfish_verify_ca": str(self.ca),
            "redfish_timeout": 10,
        }
        info.update(extra)
        return info

    def curl(self, path: str) -> dict[str, Any]:
        """The resource as curl reads it: a client bootforge did not write."""
        out = subprocess.run(
            [
                "curl",
                "-sS",
                "--max-time",
                "10",
                "--cacert",
                str(self.ca),
                "-u",
                f"{USER}:{PASSWORD}",
                self.url + path,
            ],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        doc: dict[str, Any] = json.loads(out)
        return doc

    def system(self) -> dict[str, Any]:
        return self.curl(f"/redfish/v1/Systems/{UUID}")


@pytest.fixture(scope="module")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulator]:
    pytest.importorskip("sushy_tools", reason="sushy-tools (the 'lab' extra) is not installed")
    pytest.importorskip("cryptography", reason="cryptography is not installed")
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    import bcrypt

    work = tmp_path_factory.mktemp("sushy")
    cert, key = make_tls(work, "127.0.0.1", days=1)  # the lab BMC's: its own CA, for this address
    # Cost 4: the emulator checks the hash on every request; a higher cost only burns CPU here.
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()
    (work / "htpasswd").write_text(f"{USER}:{hashed}\n")
    port = _free_port()
    systems = [{"uuid": UUID, "name": "node-a", "power_state": "Off", "nics": [{"mac": "52:54:00:00:0b:07"}]}]
    config = work / "emulator.conf"
    config.write_text(
        f"SUSHY_EMULATOR_LISTEN_IP = '127.0.0.1'\n"
        f"SUSHY_EMULATOR_LISTEN_PORT = {port}\n"
        f"SUSHY_EMULATOR_SSL_CERT = '{cert}'\n"
        f"SUSHY_EMULATOR_SSL_KEY = '{key}'\n"
        f"SUSHY_EMULATOR_AUTH_FILE = '{work / 'htpasswd'}'\n"
        "SUSHY_EMULATOR_FAKE_DRIVER = True\n"
        f"SUSHY_EMULATOR_STATE_DIR = '{work / 'state'}'\n"
        f"SUSHY_EMULATOR_FAKE_SYSTEMS = {systems!r}\n"
        "EXTERNAL_NOTIFICATION_URL = 'http://127.0.0.1:9/'\n"
    )
    log = (work / "emulator.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "sushy_tools.emulator.main", "--config", str(config)], stdout=log, stderr=log
    )
    url = f"https://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:  # until the service root answers over TLS
            if proc.poll() is not None:
                pytest.fail(f"sushy-emulator exited: {(work / 'emulator.log').read_text()[-2000:]}")
            try:
                if (
                    httpx.get(
                        url + "/redfish/v1/", verify=ssl.create_default_context(cafile=cert), timeout=2
                    ).status_code
                    == 200
                ):
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("sushy-emulator did not answer within 30 s")
            time.sleep(0.2)
        yield Emulator(url, cert, proc.pid)
    finally:
        stop_process(proc)
        log.close()


@dataclass
class Task:
    """What the Redfish interfaces use of a conductor task."""

    driver_info: dict[str, Any]
    driver_internal_info: dict[str, Any] = field(default_factory=dict)
    events: list[str] = field(default_factory=list)

    @property
    def node(self) -> Any:
        return self

    def set_internal(self, **values: Any) -> None:
        self.driver_internal_info = updated_internal(self.driver_internal_info, values)

    async def record(self, event_type: str, message: str, severity: str = "info") -> None:
        self.events.append(f"{event_type}: {message}")


def power() -> RedfishPower:
    return RedfishPower(POWER_TIMEOUT)


def management() -> RedfishManagement:
    return RedfishManagement(POWER_TIMEOUT)


# -- against the emulator ----------------------------------------------------------------------------


async def test_discovery_and_bmc_report(emulator: Emulator) -> None:
    task = Task(emulator.driver_info())
    report = await management().bmc_report(task)
    assert report.reachable, report.detail
    assert f"system /redfish/v1/Systems/{UUID}" in report.detail and "basic auth" in report.detail
    assert report.vendor == "Sushy Emulator"
    assert report.boot_modes == ["uefi", "bios"]
    assert report.virtual_media == ["cd", "usb", "floppy"]  # Cd, and Floppy (Floppy, USBStick)
    assert report.secure_boot is False
    assert report.power_state in (base.POWER_ON, base.POWER_OFF)
    assert set(report.boot_devices or []) >= {"pxe", "disk", "cdrom"}


async def test_power_on_off_reboot_wait_for_the_state(emulator: Emulator) -> None:
    task = Task(emulator.driver_info())
    iface = power()
    await iface.set_power_state(task, base.POWER_ON)
    assert emulator.system()["PowerState"] == "On"
    assert await iface.get_power_state(task) == base.POWER_ON
    await iface.reboot(task)
    assert emulator.system()["PowerState"] == "On"
    await iface.set_power_state(task, base.POWER_OFF)
    assert emulator.system()["PowerState"] == "Off"
    assert any("Redfish On at" in e for e in task.events)
    assert any("ForceRestart" in e for e in task.events)
    assert any("ForceOff" in e for e in task.events)


async def test_boot_override_once_continuous_and_mode(emulator: Emulator) -> None:
    task = Task(emulator.driver_info())
    iface = management()
    await iface.set_boot_device(task, "pxe", persistent=False)
    assert emulator.system()["Boot"]["BootSourceOverrideTarget"] == "Pxe"
    await iface.set_boot_device(task, "disk", persistent=True)
    assert emulator.system()["Boot"]["BootSourceOverrideTarget"] == "Hdd"
    # The emulator always reports Continuous (bmc-lab.md 2a), whatever was asked.
    assert await iface.get_boot_device(task) == {"boot_device": "disk", "persistent": True}
    await iface.set_boot_mode(task, "bios")
    assert emulator.system()["Boot"]["BootSourceOverrideMode"] == "Legacy"
    assert await iface.get_boot_mode(task) == "bios"
    await iface.set_boot_mode(task, "uefi")
    assert emulator.system()["Boot"]["BootSourceOverrideMode"] == "UEFI"


async def test_secure_boot_on_and_off(emulator: Emulator) -> None:
    task = Task(emulator.driver_info())
    iface = management()
    await iface.set_secure_boot_state(task, True)
    assert emulator.curl(f"/redfish/v1/Systems/{UUID}/SecureBoot")["SecureBootEnable"] is True
    assert await iface.get_secure_boot_state(task) is True
    await iface.set_secure_boot_state(task, False)
    assert emulator.curl(f"/redfish/v1/Systems/{UUID}/SecureBoot")["SecureBootEnable"] is False


@pytest.fixture
def iso_server(tmp_path: Path) -> Iterator[str]:
    """A small ISO (bytes are enough: the fake driver only downloads it) on a loopback HTTP server."""
    (tmp_path / "node.iso").write_bytes(b"CD001" + bytes(64 * 1024))
    handler = lambda *a: http.server.SimpleHTTPRequestHandler(*a, directory=str(tmp_path))  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


async def test_virtual_media_insert_and_eject(emulator: Emulator, iso_server: str) -> None:
    task = Task(emulator.driver_info())
    media = management().virtual_media_client(task)
    url = f"{iso_server}/node.iso"
    await media.insert_media(url, kind="cd")
    cd = emulator.curl(f"/redfish/v1/Systems/{UUID}/VirtualMedia/Cd")
    assert (cd["Inserted"], cd["Image"]) == (True, url)
    await media.eject_media(kind="cd")
    cd = emulator.curl(f"/redfish/v1/Systems/{UUID}/VirtualMedia/Cd")
    assert cd["Inserted"] is False and not cd["Image"]


async def test_insert_media_the_bmc_refuses_carries_its_message(emulator: Emulator, iso_server: str) -> None:
    async with RedfishClient.from_driver_info(emulator.driver_info()) as bmc:
        with pytest.raises(DriverError) as caught:
            await bmc.insert_media(f"{iso_server}/missing.iso")
    message = caught.value.message
    assert "VirtualMedia.InsertMedia" in message and emulator.url in message
    assert "HTTP 400: Cannot download virtual media: got error 404" in message
    assert PASSWORD not in message


# -- failures ---------------------------------------------------------------------------------------


async def test_wrong_password_is_a_named_401(emulator: Emulator) -> None:
    task = Task(emulator.driver_info(redfish_password="not-the-password"))
    started = time.monotonic()
    with pytest.raises(DriverError) as caught:
        await power().get_power_state(task)
    assert "HTTP 401" in caught.value.message and "redfish_password" in caught.value.message
    assert "not-the-password" not in caught.value.message
    assert time.monotonic() - started < 10
    report = await management().bmc_report(task)
    assert not report.reachable and "HTTP 401" in report.detail


async def test_unverified_certificate_is_refused_by_default(emulator: Emulator) -> None:
    task = Task(emulator.driver_info(redfish_verify_ca=True))  # the system CAs do not know it
    with pytest.raises(DriverError, match="CERTIFICATE_VERIFY_FAILED"):
        await power().get_power_state(task)


async def test_a_silent_bmc_fails_on_time_while_another_node_proceeds(emulator: Emulator) -> None:
    held: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    hung = Task(emulator.driver_info(redfish_address=f"https://127.0.0.1:{port}", redfish_timeout=2))
    good = Task(emulator.driver_info())

    async def timed(task: Task) -> tuple[float, object]:
        started = time.monotonic()
        try:
            return time.monotonic() - started, await power().get_power_state(task)
        except DriverError as e:
            return time.monotonic() - started, e

    try:
        (hung_took, hung_result), (good_took, good_result) = await asyncio.gather(timed(hung), timed(good))
    finally:
        for w in held:
            w.close()
        server.close()
        await server.wait_closed()
    assert isinstance(hung_result, DriverError) and "no answer within 2 s" in hung_result.message
    assert 1.5 < hung_took < 8  # its 2 s timeout, not a hang (generous for a loaded host)
    assert good_result in (base.POWER_ON, base.POWER_OFF) and good_took < hung_took


class FaultProxy:
    """Plain HTTP on loopback in front of the emulator's HTTPS; answers chosen requests itself."""

    def __init__(self, emulator: Emulator) -> None:
        self.emulator = emulator
        self.faults: list[tuple[str, str, int, dict[str, str], dict[str, Any]]] = []
        self.seen: list[tuple[str, str, int]] = []
        verify = ssl.create_default_context(cafile=emulator.ca)
        self._upstream = httpx.AsyncClient(base_url=emulator.url, verify=verify, timeout=10)

    def fail(
        self, method: str, suffix: str, status: int, headers: dict[str, str] | None = None, message: str = ""
    ) -> None:
        info = [{"MessageId": "Base.1.8.GeneralError", "Message": message}]
        body = {
            "error": {
                "code": "Base.1.8.GeneralError",
                "message": "See ExtendedInfo",
                "@Message.ExtendedInfo": info,
            }
        }
        self.faults.append((method, suffix, status, headers or {}, body))

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                method, target, _ = line.decode().split(" ", 2)
                headers: dict[str, str] = {}
                while (h := await reader.readline()) not in (b"\r\n", b""):
                    k, v = h.decode().split(":", 1)
                    headers[k.strip().lower()] = v.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                status, out_headers, out = await self._answer(method, target, headers, body)
                self.seen.append((method, target, status))
                head = (
                    f"HTTP/1.1 {status} X\r\nContent-Length: {len(out)}\r\nContent-Type: application/json\r\n"
                )
                head += "".join(f"{k}: {v}\r\n" for k, v in out_headers.items())
                writer.write(head.encode() + b"\r\n" + out)
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def _answer(
        self, method: str, target: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, dict[str, str], bytes]:
        for fault in self.faults:
            if fault[0] == method and target.endswith(fault[1]):
                self.faults.remove(fault)
                return fault[2], fault[3], json.dumps(fault[4]).encode()
        keep = {
            k: v
            for k, v in headers.items()
            if k in ("authorization", "content-type", "if-match", "x-auth-token")
        }
        resp = await self._upstream.request(method, target, headers=keep, content=body)
        passed = {k: v for k, v in resp.headers.items() if k.lower() in ("etag", "location", "x-auth-token")}
        return resp.status_code, passed, resp.content

    async def aclose(self) -> None:
        await self._upstream.aclose()


@pytest.fixture
async def proxy(emulator: Emulator) -> AsyncIterator[tuple[FaultProxy, str]]:
    fp = FaultProxy(emulator)
    server = await asyncio.start_server(fp.handle, "127.0.0.1", 0)
    try:
        yield fp, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()
        await server.wait_closed()
        await fp.aclose()


async def test_busy_503_with_retry_after_then_success(proxy: tuple[FaultProxy, str]) -> None:
    fp, url = proxy
    system = f"/redfish/v1/Systems/{UUID}"
    fp.fail("GET", system, 503, {"Retry-After": "1"}, "The service is temporarily unavailable")
    fp.fail("GET", system, 503, {"Retry-After": "1"}, "The service is temporarily unavailable")
    task = Task(fp.emulator.driver_info(redfish_address=url, redfish_timeout=10))
    started = time.monotonic()
    assert await power().get_power_state(task) in (base.POWER_ON, base.POWER_OFF)
    assert 2 <= time.monotonic() - started < 8
    assert [s for m, t, s in fp.seen if t == system] == [503, 503, 200]


async def test_busy_past_the_timeout_is_a_named_error(proxy: tuple[FaultProxy, str]) -> None:
    fp, url = proxy
    for _ in range(5):
        fp.fail("GET", f"/redfish/v1/Systems/{UUID}", 503, {"Retry-After": "1"}, "busy")
    task = Task(fp.emulator.driver_info(redfish_address=url, redfish_timeout=2.5))
    started = time.monotonic()
    with pytest.raises(DriverError, match="HTTP 503: busy"):
        await power().get_power_state(task)
    assert time.monotonic() - started < 8  # its 2.5 s timeout, not a wait for every Retry-After


async def test_etag_mismatch_retried_once_then_success(proxy: tuple[FaultProxy, str]) -> None:
    fp, url = proxy
    fp.fail("PATCH", f"/Systems/{UUID}", 412, message="The ETag supplied did not match")
    task = Task(fp.emulator.driver_info(redfish_address=url))
    await management().set_boot_device(task, "cdrom", persistent=True)
    assert [s for m, t, s in fp.seen if m == "PATCH"] == [412, 204]
    assert fp.emulator.system()["Boot"]["BootSourceOverrideTarget"] == "Cd"


async def test_etag_mismatch_twice_is_a_named_error(proxy: tuple[FaultProxy, str]) -> None:
    fp, url = proxy
    for _ in range(2):
        fp.fail("PATCH", f"/Systems/{UUID}", 412, message="The ETag supplied did not match")
    task = Task(fp.emulator.driver_info(redfish_address=url))
    with pytest.raises(
        DriverError, match=r"PATCH http://127\.0\.0\.1:\d+/redfish/v1/Systems/.* HTTP 412: The ETag"
    ):
        await management().set_boot_device(task, "pxe")


async def test_sushy_reads_what_bootforge_set(emulator: Emulator) -> None:
    sushy = pytest.importorskip("sushy", reason="sushy (cross-check client) is not installed")
    task = Task(emulator.driver_info())
    await management().set_boot_device(task, "pxe", persistent=False)

    def read() -> tuple[str, str]:
        conn = sushy.Sushy(
            emulator.url + "/redfish/v1/", username=USER, password=PASSWORD, verify=str(emulator.ca)
        )
        system = conn.get_system(f"/redfish/v1/Systems/{UUID}")
        return str(system.boot.target.value), str(system.boot.mode.value)

    assert await asyncio.to_thread(read) == ("Pxe", "UEFI")
