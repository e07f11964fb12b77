"""The vendor quirks table: which row a service gets, and each row's behaviour replayed against a
recorded service whose FakeBmc rules refuse what that vendor refuses."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from test_redfish_client import FakeBmc, _merge, error, fresh_auth_memory

from bootforge.drivers.redfish import RedfishError
from bootforge.drivers.redfish import quirks as q

ISO = "http://192.0.2.1:8080/vmedia/node.iso"
__all__ = ["fresh_auth_memory"]  # the autouse fixture, imported to apply here too


@pytest.mark.parametrize(
    ("fixture", "row"),
    [
        ("dell-idrac8", "dell-idrac<6"),
        ("dell-idrac9", "dell-idrac"),
        ("hpe-ilo5", "hpe-ilo"),
        ("lenovo-xcc", "lenovo-xcc"),
        ("lenovo-sd530", "lenovo-xcc-sd530"),
        ("supermicro-x12", "supermicro"),
        ("ami-megarac", "ami"),
        ("openbmc", "openbmc"),  # no Manufacturer on the system: the service root's Vendor decides
        ("generic-two-systems", "default"),
    ],
)
async def test_each_recorded_service_gets_its_row(fixture: str, row: str) -> None:
    bmc = FakeBmc(fixture, sessions=fixture != "generic-two-systems")
    extra = {"redfish_system_id": "437XR1138R2"} if fixture == "generic-two-systems" else {}
    async with bmc.client(**extra) as client:
        assert client.quirks.name == row
    manager_reads = [r for r in bmc.sent("GET") if "/Managers/" in r.url.path]
    # Only a row that depends on the firmware version costs a read of the manager at connect.
    assert bool(manager_reads) == (fixture.startswith("dell"))


def test_selection_by_manufacturer_model_and_firmware_range() -> None:
    assert q.select(("Dell Inc.",), "PowerEdge R740", "4.40.00.00").name == "dell-idrac<6"
    assert q.select(("Dell Inc.",), "PowerEdge R740", "6.00.00.00").name == "dell-idrac"
    assert q.select(("Dell Inc.",), "PowerEdge R740", None).name == "dell-idrac"
    assert q.select(("Hewlett Packard Enterprise",), None, None).name == "hpe-ilo"
    assert q.select(("", "Lenovo"), "ThinkSystem SD530", None).name == "lenovo-xcc-sd530"
    assert q.select((None, None), None, None).name == "default"
    assert q.version_tuple("6.10.30.00") == (6, 10, 30, 0)
    assert q.version_tuple("iLO 5 v2.78") == (5,)
    assert q.version_tuple("none") == ()
    assert q.needs_firmware(("Dell Inc.",), "x") and not q.needs_firmware(("Lenovo",), "x")


# -- Dell iDRAC ------------------------------------------------------------------------------------


def refuse_mode_with_other_boot_keys(
    fake: FakeBmc, request: httpx.Request, body: Any
) -> httpx.Response | None:
    boot = (body or {}).get("Boot") or {}
    if request.method == "PATCH" and "BootSourceOverrideMode" in boot and len(boot) > 1:
        return error(
            400,
            "Unable to modify the attribute because the attribute is read-only and depends on other "
            "attributes.",
            "IDRAC.1.6.SYS410",
        )
    return None


async def test_idrac_boot_mode_and_target_go_in_separate_patches() -> None:
    bmc = FakeBmc("dell-idrac9", rules=[refuse_mode_with_other_boot_keys])
    async with bmc.client() as client:
        await client.set_boot("Pxe", persistent=False, mode="Legacy")
    assert bmc.bodies("PATCH") == [
        {"Boot": {"BootSourceOverrideMode": "Legacy"}},
        {"Boot": {"BootSourceOverrideTarget": "Pxe", "BootSourceOverrideEnabled": "Once"}},
    ]
    boot = bmc.system()["Boot"]
    assert (boot["BootSourceOverrideMode"], boot["BootSourceOverrideTarget"]) == ("Legacy", "Pxe")


async def test_idrac_staged_boot_mode_is_not_held_against_it() -> None:
    def stage_mode(fake: FakeBmc, request: httpx.Request, body: Any) -> httpx.Response | None:
        if request.method == "PATCH" and "BootSourceOverrideMode" in (body or {}).get("Boot", {}):
            return httpx.Response(204)  # accepted for the next boot; the system still reads UEFI
        return None

    bmc = FakeBmc("dell-idrac9", rules=[stage_mode])
    async with bmc.client() as client:
        await client.set_boot("Pxe", persistent=False, mode="Legacy")
    assert bmc.system()["Boot"]["BootSourceOverrideMode"] == "UEFI"
    assert len(bmc.sent("PATCH")) == 2


async def test_without_the_quirk_the_same_bmc_refuses_the_combined_patch() -> None:
    bmc = FakeBmc("generic-two-systems", sessions=False, rules=[refuse_mode_with_other_boot_keys])
    async with bmc.client(redfish_system_id="437XR1138R2") as client:
        with pytest.raises(RedfishError, match="HTTP 400: Unable to modify the attribute"):
            await client.set_boot("Pxe", persistent=False, mode="Legacy")
        await client.set_boot("Pxe", persistent=False)


async def test_idrac8_finds_virtual_media_under_the_manager_first() -> None:
    bmc = FakeBmc("dell-idrac8")
    async with bmc.client() as client:
        vm = await client.insert_media(ISO)
    assert (vm.under, vm.path) == ("managers", "/redfish/v1/Managers/iDRAC.Embedded.1/VirtualMedia/CD")


async def test_idrac_busy_sys518_is_waited_for() -> None:
    left = [2]

    def not_ready(fake: FakeBmc, request: httpx.Request, body: Any) -> httpx.Response | None:
        if request.url.path.endswith("InsertMedia") and left[0]:
            left[0] -= 1
            return error(500, "iDRAC is not ready.", "IDRAC.2.8.SYS518")
        return None

    async with FakeBmc("dell-idrac9", rules=[not_ready]).client() as client:
        assert (await client.insert_media(ISO)).inserted is True
    assert left == [0]


async def test_idrac_session_limit_makes_callers_take_turns() -> None:
    bmc = FakeBmc("dell-idrac9")
    active = [0]
    peak = [0]

    def count(fake: FakeBmc, request: httpx.Request, body: Any) -> httpx.Response | None:
        active[0] = len(fake.tokens)
        peak[0] = max(peak[0], active[0])
        return None

    bmc.rules.append(count)

    async def one() -> None:
        async with bmc.client() as client:
            await client.power_state()
            await asyncio.sleep(0.02)

    await asyncio.gather(*(one() for _ in range(10)))
    assert peak[0] <= 4 and bmc.tokens == {}
    assert len(bmc.sent("POST", "/Sessions")) == 10


# -- HPE iLO -----------------------------------------------------------------------------------------


def refuse_bodyless_eject(fake: FakeBmc, request: httpx.Request, body: Any) -> httpx.Response | None:
    if request.url.path.endswith("EjectMedia") and body is None:
        return error(415, "The request body is missing", "iLO.2.15.UnsupportedMediaType")
    return None


async def test_ilo_boot_mode_is_read_only_and_eject_sends_an_object() -> None:
    bmc = FakeBmc("hpe-ilo5", rules=[refuse_bodyless_eject])
    async with bmc.client() as client:
        with pytest.raises(
            RedfishError, match=r"\(hpe-ilo\) does not let Redfish change the boot mode from UEFI to Legacy"
        ):
            await client.set_boot("Pxe", persistent=False, mode="Legacy")
        await client.set_boot("Pxe", persistent=False, mode="UEFI")  # unchanged: allowed
        vm = await client.insert_media(ISO)
        assert vm.path == "/redfish/v1/Managers/1/VirtualMedia/2"
        assert await client.eject_media() is True
    assert all("BootSourceOverrideMode" not in b["Boot"] for b in bmc.bodies("PATCH"))
    assert bmc.bodies("POST", "EjectMedia") == [{}]


async def test_ilo_slow_power_gets_twice_the_wait() -> None:
    def never(fake: FakeBmc, request: httpx.Request, body: Any) -> httpx.Response | None:
        return httpx.Response(204) if request.url.path.endswith("Reset") else None

    async with FakeBmc("hpe-ilo5", rules=[never]).client() as client:
        with pytest.raises(RedfishError, match=r"not On, after 0\.4 s"):
            await client.set_power("on", timeout=0.2)


# -- Lenovo XCC ----------------------------------------------------------------------------------------


async def test_xcc_if_match_is_sent_even_without_an_etag() -> None:
    bmc = FakeBmc("lenovo-xcc", require_if_match=True, etags=False)
    async with bmc.client() as client:
        await client.set_boot("Pxe", persistent=True)
    assert [p.headers.get("If-Match") for p in bmc.sent("PATCH")] == ["*"]


async def test_a_bmc_demanding_if_match_without_the_quirk_gets_a_named_428() -> None:
    bmc = FakeBmc("generic-two-systems", sessions=False, require_if_match=True, etags=False)
    async with bmc.client(redfish_system_id="437XR1138R2") as client:
        with pytest.raises(
            RedfishError, match="HTTP 428: The request did not provide the required precondition"
        ):
            await client.set_boot("Pxe", persistent=True)


async def test_sd530_inserts_and_ejects_by_patch() -> None:
    def needs_inserted(fake: FakeBmc, request: httpx.Request, body: Any) -> httpx.Response | None:
        if request.method == "PATCH" and "Image" in (body or {}) and "Inserted" not in body:
            return error(400, "Inserted is required", "Base.1.8.PropertyMissing")
        return None

    bmc = FakeBmc("lenovo-sd530", rules=[needs_inserted], require_if_match=True)
    async with bmc.client() as client:
        vm = await client.insert_media(ISO)
        assert (vm.inserted, vm.image) == (True, ISO)
        await client.eject_media()
    assert bmc.bodies("PATCH", "/EXT1") == [
        {"Image": ISO, "Inserted": True, "WriteProtected": True},
        {"Image": None, "Inserted": False},
    ]
    assert all(p.headers.get("If-Match") for p in bmc.sent("PATCH"))
    assert bmc.sent("POST", "Media") == []


# -- Supermicro ------------------------------------------------------------------------------------------


def supermicro_rules(fake: FakeBmc, request: httpx.Request, body: Any) -> httpx.Response | None:
    if request.url.path.endswith("InsertMedia") and set(body or {}) - {"Image"}:
        return error(
            400,
            "The action InsertMedia was submitted with invalid parameters.",
            "Base.1.10.ActionParameterUnknown",
        )
    boot = (body or {}).get("Boot")
    if request.method == "PATCH" and boot and "BootSourceOverrideTarget" in boot:
        if "BootSourceOverrideEnabled" not in boot:
            return error(400, "BootSourceOverrideEnabled is required", "Base.1.10.PropertyMissing")
        if "BootSourceOverrideMode" not in boot:  # the mode falls back to its default
            boot = dict(boot, BootSourceOverrideMode="Legacy")
        _merge(fake.docs[request.url.path], {"Boot": boot})
        return httpx.Response(200, json={})
    return None


async def test_supermicro_boot_and_media() -> None:
    bmc = FakeBmc("supermicro-x12", rules=[supermicro_rules])
    async with bmc.client() as client:
        await client.set_boot(mode="UEFI")
        await client.set_boot("Cd", persistent=False)
        await client.set_boot("Cd", persistent=False)  # Once already: sent again all the same
        vm = await client.insert_media(ISO)
    boot = bmc.system()["Boot"]
    assert (boot["BootSourceOverrideTarget"], boot["BootSourceOverrideMode"]) == ("UsbCd", "UEFI")
    assert (
        bmc.bodies("PATCH")[1:]
        == [
            {
                "Boot": {
                    "BootSourceOverrideTarget": "UsbCd",
                    "BootSourceOverrideEnabled": "Once",
                    "BootSourceOverrideMode": "UEFI",
                }
            }
        ]
        * 2
    )
    assert bmc.bodies("POST", "InsertMedia") == [{"Image": ISO}]
    assert vm.inserted is True


# -- AMI MegaRAC ------------------------------------------------------------------------------------------


async def test_ami_writes_boot_to_the_future_state_object_with_if_match() -> None:
    def future_state(fake: FakeBmc, request: httpx.Request, body: Any) -> httpx.Response | None:
        if request.method == "PATCH" and request.url.path == "/redfish/v1/Systems/Self":
            return error(
                400,
                "Support of this Operation for Boot Properties is moved to FutureState "
                "URI(/redfish/v1/Systems/Self/SD)",
                "Ami.1.0.OperationSupportedInFutureStateURI",
            )
        return None

    bmc = FakeBmc("ami-megarac", rules=[future_state], require_if_match=True)
    async with bmc.client() as client:
        await client.set_boot("Pxe", persistent=False)
        await client.insert_media(ISO)
    patch = bmc.sent("PATCH")
    assert [p.url.path for p in patch] == ["/redfish/v1/Systems/Self/SD"]
    assert patch[0].headers["If-Match"] == '"0"'
    assert bmc.docs["/redfish/v1/Systems/Self/SD"]["Boot"]["BootSourceOverrideTarget"] == "Pxe"


# -- OpenBMC ----------------------------------------------------------------------------------------------


async def test_openbmc_insert_names_the_transfer_protocol() -> None:
    def needs_protocol(fake: FakeBmc, request: httpx.Request, body: Any) -> httpx.Response | None:
        if request.url.path.endswith("InsertMedia") and "TransferProtocolType" not in (body or {}):
            return error(400, "TransferProtocolType is required", "Base.1.13.GeneralError")
        return None

    bmc = FakeBmc("openbmc", rules=[needs_protocol])
    async with bmc.client() as client:
        vm = await client.insert_media(ISO)
        await client.insert_media("https://192.0.2.1/other.iso")
    assert vm.path == "/redfish/v1/Managers/bmc/VirtualMedia/Slot_0"
    inserts = bmc.bodies("POST", "InsertMedia")
    assert [b["TransferProtocolType"] for b in inserts] == ["HTTP", "HTTPS"]
