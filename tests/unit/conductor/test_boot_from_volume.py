"""Boot from volume, conductor side: the iPXE sanboot script, the netboot view's plan for a node with a
boot volume, and a deploy that writes no image and leaves the machine booting from the network."""

from __future__ import annotations

from ipaddress import IPv4Address
from typing import Any

import pytest
from support.service import InProcess

from bootforge.conductor.netboot import BootEndpoints, NetbootView
from bootforge.conductor.task import load_node
from bootforge.netboot.boot import scripts

V = {"X-OpenStack-Ironic-API-Version": "1.78"}


class Api:
    """The API calls these tests repeat, over the in-process bootforge."""

    def __init__(self, bf: InProcess) -> None:
        self.bf = bf
        self.c = bf.client

    async def node(self, **body: Any) -> dict[str, Any]:
        r = await self.c.post("/v1/nodes", json={"driver": "fake-hardware", **body})
        assert r.status_code == 201, r.text
        out: dict[str, Any] = r.json()
        return out

    async def drive(self, ident: str, *verbs: str) -> dict[str, Any]:
        for verb in verbs:
            r = await self.c.put(f"/v1/nodes/{ident}/states/provision", json={"target": verb})
            assert r.status_code == 202, f"{verb}: {r.text}"
            await self.bf.conductor.wait_idle()
        out: dict[str, Any] = (await self.c.get(f"/v1/nodes/{ident}")).json()
        return out


@pytest.fixture
def api(bf: InProcess) -> Api:
    return Api(bf)


MAC = "52:54:00:bf:00:01"
INITIATOR = "iqn.2026-12.org.bootforge:initiator1"
TARGET = "iqn.2026-12.org.bootforge:boot-volume"
SECRET = "chap-Secret-0042"
ENDPOINTS = BootEndpoints(
    tftp_server=IPv4Address("10.9.0.1"),
    http_base="http://10.9.0.1:8080/boot/files",
    ipxe_script_url="http://10.9.0.1:8080/boot/ipxe?mac={mac}",
)


def test_sanboot_script() -> None:
    plan = scripts.SanBoot("10.0.0.5", 3260, 10, TARGET, INITIATOR, "user", SECRET, attempts=2)
    assert plan.uri == f"iscsi:10.0.0.5::3260:a:{TARGET}"  # iPXE reads the LUN as hexadecimal
    text = scripts.render_ipxe(plan)
    lines = text.splitlines()
    assert lines[0] == "#!ipxe"
    assert f"set initiator-iqn {INITIATOR}" in lines
    assert "set username user" in lines and f"set password {SECRET}" in lines
    assert lines.count(f"sanboot {plan.uri} || goto retry1") == 1
    assert lines[-1] == "reboot" and "sanboot" not in " ".join(lines[-3:])
    bare = scripts.render_ipxe(scripts.SanBoot("[fd77::1]", 3260, 1, TARGET))
    assert "clear password" in bare and "initiator-iqn" not in bare
    assert f"sanboot iscsi:[fd77::1]::3260:1:{TARGET} || goto retry1" in bare
    with pytest.raises(scripts.ScriptError):
        scripts.render_grub(plan)


@pytest.mark.parametrize(
    "bad",
    [
        {"host": "10.0.0.5 || shell"},
        {"target_iqn": "iqn.2026-12.org.x:${password}"},
        {"initiator_iqn": "iqn.2026-12.org.x:a b"},
        {"username": "u", "password": "has$dollar"},
        {"username": "u", "password": None},
        {"lun": 256},
        {"port": 0},
    ],
)
def test_sanboot_refuses_what_a_script_cannot_carry(bad: dict[str, Any]) -> None:
    fields: dict[str, Any] = {"host": "10.0.0.5", "port": 3260, "lun": 1, "target_iqn": TARGET, **bad}
    with pytest.raises(scripts.ScriptError) as e:
        scripts.SanBoot(**fields)
    assert "$dollar" not in str(e.value)


def iscsi_properties(**more: Any) -> dict[str, Any]:
    return {
        "target_iqn": TARGET,
        "target_portal": "10.9.0.1:3260",
        "target_lun": 1,
        "auth_method": "CHAP",
        "auth_username": "bfv",
        "auth_password": SECRET,
        **more,
    }


async def bfv_node(api: Api, *, properties: dict[str, Any] | None = None, connector: bool = True) -> str:
    node = await api.node(
        name="bfv",
        storage_interface="iscsi",
        boot_interface="pxe",
        deploy_interface="direct",
        automated_clean=False,
        driver_info={"deploy_kernel": "http://10.9.0.1/k", "deploy_ramdisk": "http://10.9.0.1/i"},
    )
    uuid = str(node["uuid"])
    assert (await api.c.post("/v1/ports", json={"node_uuid": uuid, "address": MAC})).status_code == 201
    if connector:
        body = {"node_uuid": uuid, "type": "iqn", "connector_id": INITIATOR}
        assert (await api.c.post("/v1/volume/connectors", json=body, headers=V)).status_code == 201
    body = {
        "node_uuid": uuid,
        "volume_type": "iscsi",
        "boot_index": 0,
        "volume_id": "boot-vol",
        "properties": iscsi_properties() if properties is None else properties,
    }
    r = await api.c.post("/v1/volume/targets", json=body, headers=V)
    assert r.status_code == 201, r.text
    return uuid


async def set_state(bf: InProcess, uuid: str, state: str) -> None:
    async with bf.conductor.db.write() as s:
        node = await load_node(bf.conductor, uuid)
        row = await s.get(type(node), node.id)
        assert row is not None
        row.provision_state = state
        await s.commit()


def plan(view: NetbootView, ip: str = "10.9.0.100") -> scripts.BootPlan:
    return view.plan_for({"mac": MAC}, ENDPOINTS.ipxe_script_url.format(mac=MAC), ip)


async def test_view_sanboots_an_active_node_with_a_boot_volume(api: Api) -> None:
    uuid = await bfv_node(api)
    view = NetbootView(api.bf.conductor.db, ENDPOINTS)
    await view.refresh()
    # Not deployed yet: nothing to boot.
    assert isinstance(plan(view), scripts.RefuseBoot)
    await set_state(api.bf, uuid, "active")
    await view.refresh()
    san = plan(view)
    assert isinstance(san, scripts.SanBoot)
    assert (san.host, san.port, san.lun, san.target_iqn) == ("10.9.0.1", 3260, 1, TARGET)
    assert (san.initiator_iqn, san.username, san.password) == (INITIATOR, "bfv", SECRET)
    # With bootforge's DHCP in full mode, the CHAP secret goes only to the address leased to the MAC.
    bound = NetbootView(api.bf.conductor.db, ENDPOINTS, bind_to_leases=True)
    await bound.refresh()
    assert isinstance(plan(bound, "10.9.0.100"), scripts.RefuseBoot)
    bound.note_dhcp("dhcp.ack", MAC, "10.9.0.100")
    assert isinstance(plan(bound, "10.9.0.100"), scripts.SanBoot)
    assert isinstance(plan(bound, "10.9.0.101"), scripts.RefuseBoot)
    # A node whose storage interface is noop boots as before (its local disk), volumes or not.
    r = await api.c.patch(
        f"/v1/nodes/{uuid}", json=[{"op": "replace", "path": "/storage_interface", "value": "noop"}]
    )
    assert r.status_code == 200, r.text
    await view.refresh()
    assert isinstance(plan(view), scripts.LocalDiskBoot)


async def test_view_refuses_an_incomplete_volume_with_the_reason(api: Api) -> None:
    told: list[tuple[str, str]] = []
    uuid = await bfv_node(api, properties={"target_iqn": TARGET})
    await set_state(api.bf, uuid, "active")
    view = NetbootView(api.bf.conductor.db, ENDPOINTS, on_refusal=lambda n, why: told.append((n, why)))
    await view.refresh()
    assert isinstance(plan(view), scripts.RefuseBoot)
    assert told and told[0][0] == uuid and "target_portal" in told[0][1]


async def test_deploy_writes_no_image_and_boots_the_volume(api: Api) -> None:
    uuid = await bfv_node(api)
    node = await api.drive(uuid, "manage", "provide")
    assert node["provision_state"] == "available"
    node = await api.drive(uuid, "active")
    assert node["provision_state"] == "active", node["last_error"]
    assert node["power_state"] == "power on"
    assert "deploy_image" not in node["driver_internal_info"]
    boot = (await api.c.get(f"/v1/nodes/{uuid}/management/boot_device")).json()
    assert boot == {"boot_device": "pxe", "persistent": True}
    events = [e["event"] for e in (await api.c.get(f"/v1/nodes/{uuid}/history", headers=V)).json()["history"]]
    assert any("no image is written" in e for e in events), events
    assert any("iPXE sanboot of iSCSI" in e and TARGET in e for e in events), events
    assert not any(SECRET in e for e in events)


async def test_deploy_refuses_image_source_with_a_boot_volume(api: Api) -> None:
    uuid = await bfv_node(api)
    await api.drive(uuid, "manage", "provide")
    patch = [{"op": "add", "path": "/instance_info/image_source", "value": "some-image"}]
    assert (await api.c.patch(f"/v1/nodes/{uuid}", json=patch)).status_code == 200
    node = await api.drive(uuid, "active")
    assert node["provision_state"] == "deploy failed"
    assert "image_source" in node["last_error"]


async def test_deploy_needs_the_initiator_connector(api: Api) -> None:
    uuid = await bfv_node(api, connector=False)
    await api.drive(uuid, "manage", "provide")
    node = await api.drive(uuid, "active")
    assert node["provision_state"] == "deploy failed"
    assert "iqn" in node["last_error"]


async def test_storage_iscsi_needs_a_network_boot_interface(api: Api) -> None:
    # The qemu type's virtual-media boot does not network-boot: iPXE never gets to sanboot.
    r = await api.c.post(
        "/v1/nodes",
        json={"driver": "qemu", "boot_interface": "virtual-media", "storage_interface": "iscsi"},
        headers=V,
    )
    assert r.status_code == 201, r.text
    result = (await api.c.get(f"/v1/nodes/{r.json()['uuid']}/validate", headers=V)).json()
    assert result["storage"]["result"] is False and "boot_interface" in result["storage"]["reason"]


async def test_iscsi_node_without_a_boot_volume_needs_an_image(api: Api) -> None:
    node = await api.node(
        storage_interface="iscsi",
        boot_interface="pxe",
        deploy_interface="direct",
        automated_clean=False,
        driver_info={"deploy_kernel": "http://10.9.0.1/k", "deploy_ramdisk": "http://10.9.0.1/i"},
    )
    await api.drive(node["uuid"], "manage", "provide")
    failed = await api.drive(node["uuid"], "active")
    assert failed["provision_state"] == "deploy failed"
    assert "no boot volume" in failed["last_error"] and "image_source" in failed["last_error"]
