"""GET /v1/nodes/{ident}/bmc: bootforge's own check of a node's BMC (what `bootforge node bmc` prints).

A test-only hardware type stands in for drivers whose bmc_report says more than the default, hangs,
raises, or carelessly quotes the password; the fake and qemu types show the default report and a node
whose driver_info does not validate.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import bcrypt
import httpx
import pytest
from sqlalchemy import update
from support.service import LATEST, InProcess, in_process

from bootforge.api.app import create_app
from bootforge.api.auth import Htpasswd
from bootforge.db.models import Node
from bootforge.drivers import base, fake, hardware
from bootforge.drivers.base import Task
from bootforge.errors import DriverError

TEST_TYPE = "report-test-hardware"
PASSWORD = "hunter2-s3cret"


class ReportingManagement(fake.FakeManagement):
    """Answers as driver_info["behaviour"] says: "full", "hang", "raise" or "leak"."""

    async def bmc_report(self, task: Task) -> base.BmcReport:
        behaviour = task.node.driver_info.get("behaviour")
        if behaviour == "hang":
            await asyncio.Event().wait()
        if behaviour == "raise":
            raise DriverError("BMC at 192.0.2.9:623 refused the session")
        if behaviour == "leak":
            # A careless driver quoting what it sent; the API must not pass the password on.
            password = task.node.driver_info["bmc_password"]
            return base.BmcReport(False, f"login admin/{password} refused", extra={"sent": [password]})
        return base.BmcReport(
            True,
            "Redfish 1.11 at https://192.0.2.9, session auth",
            power_state=base.POWER_ON,
            boot_devices=["pxe", "disk", "cdrom"],
            boot_modes=["bios", "uefi"],
            virtual_media=["cd"],
            secure_boot=False,
            vendor="Contoso",
            model="R1000",
            firmware="7.10",
            extra={"reset_types": ["On", "ForceOff"]},
        )


def _hardware() -> hardware.HardwareType:
    hw = hardware.HARDWARE_TYPES["fake-hardware"]()
    interfaces = dict(hw.interfaces)
    interfaces["management"] = [("fake", lambda s: ReportingManagement(s.fake_delays))]
    return hardware.HardwareType(TEST_TYPE, "test only: bmc_report answers as told", interfaces)


@pytest.fixture
async def bfr(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[InProcess]:
    monkeypatch.setitem(hardware.HARDWARE_TYPES, TEST_TYPE, _hardware)
    async for x in in_process(
        tmp_path, enabled_hardware_types=["fake-hardware", "qemu", TEST_TYPE], bmc_report_timeout=0.5
    ):
        yield x


async def node(bf: InProcess, name: str, driver: str = TEST_TYPE, **info: Any) -> None:
    r = await bf.client.post("/v1/nodes", json={"driver": driver, "name": name, "driver_info": info})
    assert r.status_code == 201, r.text


async def check(bf: InProcess, ident: str) -> dict[str, Any]:
    r = await bf.client.get(f"/v1/nodes/{ident}/bmc")
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


async def test_a_full_report(bfr: InProcess) -> None:
    await node(bfr, "full", behaviour="full", bmc_password=PASSWORD)
    r = await check(bfr, "full")
    assert r["reachable"] is True
    assert r["name"] == "full" and r["driver"] == TEST_TYPE
    assert r["interfaces"] == {"power": "fake", "management": "fake"}
    assert r["validation"]["power"] == {"result": True, "reason": None}
    assert (r["power_state"], r["boot_modes"], r["virtual_media"], r["secure_boot"]) == (
        "power on",
        ["bios", "uefi"],
        ["cd"],
        False,
    )
    assert (r["vendor"], r["model"], r["firmware"]) == ("Contoso", "R1000", "7.10")
    assert r["extra"] == {"reset_types": ["On", "ForceOff"]}
    assert 0 <= r["seconds"] < 0.5


async def test_the_default_report_asks_the_power_interface(bfr: InProcess) -> None:
    await node(bfr, "plain", driver="fake-hardware")
    r = await check(bfr, "plain")
    assert (r["reachable"], r["detail"], r["power_state"]) == (True, "fake answers", "power off")
    assert r["boot_devices"] == ["pxe", "disk", "cdrom", "bios"]
    assert r["virtual_media"] is None and r["secure_boot"] is None


async def test_a_hung_bmc_is_reported_unreachable_within_the_timeout(bfr: InProcess) -> None:
    await node(bfr, "hung", behaviour="hang")
    r = await asyncio.wait_for(check(bfr, "hung"), 10)
    assert r["reachable"] is False
    assert r["detail"] == "the BMC did not answer within 0.5 s (bmc_report_timeout)"
    assert 0.5 <= r["seconds"] < 5


async def test_a_driver_error_is_the_reason(bfr: InProcess) -> None:
    await node(bfr, "refusing", behaviour="raise")
    r = await check(bfr, "refusing")
    assert (r["reachable"], r["detail"]) == (False, "DriverError: BMC at 192.0.2.9:623 refused the session")


async def test_passwords_never_leave_in_the_answer(bfr: InProcess) -> None:
    await node(bfr, "leaky", behaviour="leak", bmc_password=PASSWORD, nested={"redfish_password": "other-pw"})
    r = await bfr.client.get("/v1/nodes/leaky/bmc")
    assert r.status_code == 200
    assert PASSWORD not in r.text
    assert r.json()["detail"] == "login admin/****** refused"
    assert r.json()["extra"] == {"sent": ["******"]}


async def test_invalid_driver_info_is_reported_without_contacting_anything(bfr: InProcess) -> None:
    await node(bfr, "no-socket", driver="qemu")
    r = await check(bfr, "no-socket")
    assert r["reachable"] is False
    assert r["validation"]["power"]["result"] is False
    assert "qemu_qmp_socket" in r["validation"]["power"]["reason"]
    assert r["detail"].startswith("not contacted, driver_info does not validate: power: ")


async def test_the_check_takes_no_lock_and_changes_nothing(bfr: InProcess) -> None:
    await node(bfr, "busy", behaviour="full")
    async with bfr.conductor.db.write() as s:
        await s.execute(update(Node).where(Node.name == "busy").values(reservation="another-conductor"))
        await s.commit()
    before = (await bfr.client.get("/v1/nodes/busy")).json()
    history = (await bfr.client.get("/v1/nodes/busy/history")).json()["history"]
    assert (await check(bfr, "busy"))["reachable"] is True  # a locked node can still be looked at
    after = (await bfr.client.get("/v1/nodes/busy")).json()
    assert after == before
    assert (await bfr.client.get("/v1/nodes/busy/history")).json()["history"] == history


async def test_unknown_node_is_404(bfr: InProcess) -> None:
    r = await bfr.client.get("/v1/nodes/nobody/bmc")
    assert r.status_code == 404


async def test_the_check_needs_credentials_like_every_route(bfr: InProcess, tmp_path: Path) -> None:
    await node(bfr, "guarded", behaviour="full")
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text("admin:" + bcrypt.hashpw(b"pw", bcrypt.gensalt(rounds=4)).decode() + "\n")
    app = create_app(bfr.services, Htpasswd(htpasswd))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://localhost", headers=LATEST) as c:
        assert (await c.get("/v1/nodes/guarded/bmc")).status_code == 401
        r = await c.get("/v1/nodes/guarded/bmc", auth=("admin", "pw"))
        assert r.status_code == 200 and r.json()["reachable"] is True
