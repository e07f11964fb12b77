"""Issue #11 finding 10: the iPXE script anyone can fetch with ?mac= does not say which node has that
MAC or what state it is in; the reason a node is refused goes to that node's timeline instead."""

from __future__ import annotations

from ipaddress import IPv4Address

from sqlalchemy import update
from support.service import InProcess

from bootforge.conductor.netboot import BootEndpoints, NetbootView, RamdiskSource
from bootforge.db.models import Node

ENDPOINTS = BootEndpoints(
    tftp_server=IPv4Address("10.9.0.1"),
    http_base="http://10.9.0.1:8080",
    ipxe_script_url="http://10.9.0.1:8080/boot/ipxe?mac={mac}",
)
KNOWN = "52:54:00:aa:bb:01"
UNKNOWN = "52:54:00:aa:bb:99"


async def test_refusals_read_the_same_for_enrolled_and_unknown_macs(bf: InProcess) -> None:
    r = await bf.client.post("/v1/nodes", json={"driver": "fake-hardware", "name": "private-name"})
    uuid = r.json()["uuid"]
    assert (await bf.client.post("/v1/ports", json={"node_uuid": uuid, "address": KNOWN})).status_code == 201
    reasons: list[tuple[str, str]] = []
    view = NetbootView(
        bf.conductor.db,
        ENDPOINTS,
        RamdiskSource("http://10.9.0.1:6385", "bootforge/vmlinuz", "bootforge/initrd", ()),
        on_refusal=lambda node, why: reasons.append((node, why)),
    )
    await view.refresh()
    known = view.ipxe_script({"mac": KNOWN}, "10.9.0.50")
    unknown = view.ipxe_script({"mac": UNKNOWN}, "10.9.0.51")
    for script in (known, unknown, view.grub_config({"mac": KNOWN}, "10.9.0.50")):
        assert uuid not in script and "private-name" not in script and "enroll" not in script
    assert known.replace(KNOWN, UNKNOWN) == unknown
    assert len(reasons) == 1 and reasons[0][0] == uuid and "enroll" in reasons[0][1]
    # Asked again at once: the timeline is not flooded with the same reason.
    view.ipxe_script({"mac": KNOWN}, "10.9.0.50")
    assert len(reasons) == 1
    async with bf.conductor.db.write() as s:
        await s.execute(update(Node).where(Node.uuid == uuid).values(provision_state="available"))
        await s.commit()
    await view.refresh()
    assert "available" not in view.ipxe_script({"mac": KNOWN}, "10.9.0.50")
    assert len(reasons) == 2 and "available" in reasons[1][1]
