"""ARM64 nodes in the conductor's netboot view (#12): DHCP architecture 0x0b gets Debian's signed
arm64 chain (shimaa64.efi -> grubaa64.efi) when there is no arm64 iPXE, or the operator's iPXE build
when loader_dirs has one; the architecture the firmware announced becomes properties.cpu_arch (once,
with a timeline event, never over a value already set, never under another holder's lock); and the
node's per-node GRUB config names the arm64 ramdisk (bootforge/arm64/...) with the arm64 console."""

from __future__ import annotations

import asyncio
import time
from ipaddress import IPv4Address

from sqlalchemy import select, update
from support.service import InProcess
from test_netboot_view import ENDPOINTS, client

from bootforge.conductor.netboot import NetbootView, RamdiskSource
from bootforge.db.models import Node
from bootforge.netboot import dhcp
from bootforge.netboot.boot.loaders import how_to_provide

MAC = "52:54:00:a6:40:01"
TFTP = IPv4Address("10.9.0.1")
NO_IPXE = {"ipxe-arm64.efi": how_to_provide("ipxe-arm64.efi")}


async def enrol(bf: InProcess, mac: str, properties: dict[str, object] | None = None) -> str:
    body: dict[str, object] = {"driver": "fake-hardware", "name": f"arm-{mac[-2:]}"}
    if properties is not None:
        body["properties"] = properties
    node = (await bf.client.post("/v1/nodes", json=body)).json()
    r = await bf.client.post("/v1/ports", json={"node_uuid": node["uuid"], "address": mac})
    assert r.status_code == 201, r.text
    return str(node["uuid"])


def view_for(bf: InProcess, missing: dict[str, str] | None = None) -> NetbootView:
    ramdisk = RamdiskSource(
        "http://10.9.0.1:6385", "bootforge/vmlinuz", "bootforge/initrd", ("console=ttyS0,115200n8", "quiet")
    )
    return NetbootView(
        bf.conductor.db, ENDPOINTS, ramdisk, missing_loaders=NO_IPXE if missing is None else missing
    )


async def node_row(bf: InProcess, uuid: str) -> tuple[dict[str, object], str | None]:
    async with bf.conductor.db.read_conn() as conn:
        props, reservation = (
            await conn.execute(select(Node.properties, Node.reservation).where(Node.uuid == uuid))
        ).one()
    return dict(props or {}), reservation


async def arch_events(bf: InProcess, uuid: str) -> list[str]:
    got = (await bf.client.get(f"/v1/nodes/{uuid}/history?detail=true")).json()["history"]
    return [e["event"] for e in got if "cpu_arch" in e["event"]]


async def wait_for(check: object, timeout: float = 10.0) -> None:
    assert callable(check)
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def test_arm64_pxe_gets_the_signed_arm64_chain_over_tftp(bf: InProcess) -> None:
    await enrol(bf, MAC)
    view = view_for(bf)
    await view.refresh()
    assert view.boot_for(client(MAC, 0x0B), None) == dhcp.BootDecision("shimaa64.efi", TFTP)
    # x64 UEFI beside it keeps iPXE; GRUB never gets a loader (it does not DHCP itself, iPXE would).
    assert view.boot_for(client(MAC, 7), None) == dhcp.BootDecision("ipxe.efi", TFTP)
    # HTTP-boot arm64 firmware: the signed GRUB could not read its config over HTTP; nothing offered.
    http = view.boot_for(client(MAC, 0x13, http=True), None)
    assert isinstance(http, dhcp.NoBootFile) and "ipxe-arm64.efi" in http.message


async def test_an_operators_arm64_ipxe_build_is_preferred(bf: InProcess) -> None:
    await enrol(bf, MAC)
    view = view_for(bf, missing={})  # loader_dirs provide ipxe-arm64.efi
    await view.refresh()
    assert view.boot_for(client(MAC, 0x0B), None) == dhcp.BootDecision("ipxe-arm64.efi", TFTP)
    # ... unless the node asks for Secure Boot: unsigned iPXE would be refused by its firmware.
    sb = "52:54:00:a6:40:02"
    await enrol(bf, sb, {"capabilities": "secure_boot:true"})
    await view.refresh()
    assert view.boot_for(client(sb, 0x0B), None) == dhcp.BootDecision("shimaa64.efi", TFTP)


async def test_arm64_without_ipxe_or_chain_gets_no_boot_file_naming_both_ways_out(bf: InProcess) -> None:
    await enrol(bf, MAC)
    missing = {n: how_to_provide(n) for n in ("ipxe-arm64.efi", "grubaa64.efi")}
    view = view_for(bf, missing)
    await view.refresh()
    refused = view.boot_for(client(MAC, 0x0B), None)
    assert isinstance(refused, dhcp.NoBootFile) and refused.reason == dhcp.LOADER_MISSING
    text = refused.message
    assert "arm64-uefi" in text and "0x0b" in text and "ipxe-arm64.efi" in text and "grubaa64.efi" in text
    assert "bootforge ramdisk build --arch arm64" in text and "netboot.loader_dirs" in text
    assert "shimaa64.efi" not in text.split("missing", 2)[-1]  # only what is missing is named


async def test_dhcp_architecture_becomes_cpu_arch_once_with_a_timeline_event(bf: InProcess) -> None:
    uuid = await enrol(bf, MAC)
    view = view_for(bf)
    await view.refresh()
    for _ in range(5):  # DISCOVER, REQUEST, retries: one write, one event
        view.boot_for(client(MAC, 0x0B), None)

    async def recorded() -> bool:
        return (await node_row(bf, uuid))[0].get("cpu_arch") == "aarch64"

    await wait_for(recorded)
    await wait_for(lambda: _no_tasks(view))
    events = await arch_events(bf, uuid)
    assert events == [
        "properties.cpu_arch set to aarch64: the firmware announced DHCP architecture 0x0b (arm64-uefi)"
    ]
    await view.refresh()
    assert view.by_mac[MAC].cpu_arch == "aarch64"


async def _no_tasks(view: NetbootView) -> bool:
    return not view._recording


async def test_a_cpu_arch_already_set_is_never_overwritten(bf: InProcess) -> None:
    uuid = await enrol(bf, MAC, {"cpu_arch": "x86_64"})
    view = view_for(bf)
    await view.refresh()
    view.boot_for(client(MAC, 0x0B), None)
    # Decided at once: no write is even started for a node whose architecture is set.
    assert not view._recording
    assert (await node_row(bf, uuid))[0]["cpu_arch"] == "x86_64"
    assert await arch_events(bf, uuid) == []


async def test_cpu_arch_waits_for_the_lock_holder_then_is_written(bf: InProcess) -> None:
    uuid = await enrol(bf, MAC)
    async with bf.conductor.db.write() as s:
        await s.execute(update(Node).where(Node.uuid == uuid).values(reservation="someone-else"))
        await s.commit()
    view = view_for(bf)
    await view.refresh()
    task = asyncio.create_task(view._record_cpu_arch(view.by_mac[MAC], client(MAC, 0x0B).arch, every=0.05))  # type: ignore[arg-type]
    await asyncio.sleep(0.3)
    props, _ = await node_row(bf, uuid)
    assert "cpu_arch" not in props and not task.done()  # never written under another holder's lock
    async with bf.conductor.db.write() as s:
        await s.execute(update(Node).where(Node.uuid == uuid).values(reservation=None))
        await s.commit()
    await asyncio.wait_for(task, 5)
    assert (await node_row(bf, uuid))[0]["cpu_arch"] == "aarch64"


async def test_arm64_node_boots_the_arm64_ramdisk_with_the_arm64_console(bf: InProcess) -> None:
    uuid = await enrol(bf, MAC)
    async with bf.conductor.db.write() as s:
        await s.execute(update(Node).where(Node.uuid == uuid).values(provision_state="inspect wait"))
        await s.commit()
    view = view_for(bf)
    await view.refresh()
    # Before any DHCP from it: the default (x86_64) ramdisk, as before architectures were told apart.
    before = view.grub_config({"mac": MAC}, "10.9.0.100", tftp=True)
    assert "(tftp,10.9.0.1)/bootforge/vmlinuz'" in before and "ttyAMA0" not in before
    view.boot_for(client(MAC, 0x0B), None)  # the firmware said arm64: used at once, before the write
    cfg = view.grub_config({"mac": MAC}, "10.9.0.100", tftp=True)
    assert "linux '(tftp,10.9.0.1)/bootforge/arm64/vmlinuz' " in cfg
    assert "initrd '(tftp,10.9.0.1)/bootforge/arm64/initrd'" in cfg
    # The operator's console words first, the arm64 UART last (the last console= that exists wins).
    assert cfg.index("'console=ttyS0,115200n8'") < cfg.index("'console=ttyAMA0,115200'")
    await wait_for(lambda: _no_tasks(view))


async def test_an_architecture_without_a_ramdisk_is_refused_with_the_reason_on_its_timeline(
    bf: InProcess,
) -> None:
    uuid = await enrol(bf, MAC, {"cpu_arch": "ppc64le"})
    async with bf.conductor.db.write() as s:
        await s.execute(update(Node).where(Node.uuid == uuid).values(provision_state="inspect wait"))
        await s.commit()
    told: list[str] = []
    view = view_for(bf)
    view.on_refusal = lambda node, why: told.append(why)
    await view.refresh()
    script = view.ipxe_script({"mac": MAC}, "10.9.0.100")
    assert "nothing to boot" in script and "ppc64le" not in script
    assert told and "ppc64le has no bootforge ramdisk" in told[0] and "deploy_kernel" in told[0]


async def test_an_http_boot_client_records_its_architecture_too(bf: InProcess) -> None:
    """UEFI HTTP boot (HTTPClient:Arch:00019): no boot file for it (no arm64 iPXE), but the node still
    learns it is aarch64, which is what its operator needs to see to build the right ramdisk."""
    uuid = await enrol(bf, MAC)
    view = view_for(bf)
    await view.refresh()
    assert isinstance(view.boot_for(client(MAC, 0x13, http=True), None), dhcp.NoBootFile)

    async def recorded() -> bool:
        return (await node_row(bf, uuid))[0].get("cpu_arch") == "aarch64"

    await wait_for(recorded)
    assert (await arch_events(bf, uuid))[0].endswith("DHCP architecture 0x13 (arm64-uefi-http)")
    await wait_for(lambda: _no_tasks(view))


async def test_the_firmwares_own_word_beats_a_recorded_architecture(bf: InProcess) -> None:
    """A stranger's forged DHCP packet may have recorded aarch64 for an x86 node (while its cpu_arch
    was unset): the machine's own DHCP at its next boot still gets it its own ramdisk."""
    uuid = await enrol(bf, MAC, {"cpu_arch": "aarch64"})
    async with bf.conductor.db.write() as s:
        await s.execute(update(Node).where(Node.uuid == uuid).values(provision_state="inspect wait"))
        await s.commit()
    view = view_for(bf)
    await view.refresh()
    assert "bootforge/arm64/vmlinuz" in view.grub_config({"mac": MAC}, "10.9.0.100", tftp=True)
    view.boot_for(client(MAC, 7), None)  # the real machine: x64 UEFI
    assert "/bootforge/vmlinuz" in view.ipxe_script({"mac": MAC}, "10.9.0.100")
    assert (await node_row(bf, uuid))[0]["cpu_arch"] == "aarch64"  # recorded values are not rewritten
