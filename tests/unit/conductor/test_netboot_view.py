"""The conductor's answers to the netboot servers: known MACs, boot decisions, leases, timeline events."""

from ipaddress import IPv4Address

from support.service import InProcess

from bootforge.conductor.netboot import BootEndpoints, DbLeaseStore, EventSink, NetbootView, RamdiskSource
from bootforge.netboot.boot.arch import lookup_arch
from bootforge.netboot.dhcp import ClientInfo, LeaseRecord, LeaseState

ENDPOINTS = BootEndpoints(
    tftp_server=IPv4Address("10.9.0.1"),
    http_base="http://10.9.0.1:8080/boot/files",
    ipxe_script_url="http://10.9.0.1:8080/boot/ipxe?mac={mac}",
)


def client(mac: str, arch: int | None, *, ipxe: bool = False, http: bool = False) -> ClientInfo:
    return ClientInfo(
        mac=mac,
        arch_code=arch,
        arch=lookup_arch(arch) if arch is not None else None,
        vendor_class=b"PXEClient",
        user_classes=(b"iPXE",) if ipxe else (),
        pxe=True,
        http_boot=http,
        ipxe=ipxe,
        uuid=None,
        guid_raw=None,
        relay=None,
        interface="eth0",
    )


async def enrol(bf: InProcess, mac: str) -> str:
    node = (await bf.client.post("/v1/nodes", json={"driver": "fake-hardware", "name": "n1"})).json()
    r = await bf.client.post("/v1/ports", json={"node_uuid": node["uuid"], "address": mac})
    assert r.status_code == 201, r.text
    return str(node["uuid"])


async def test_known_macs_come_from_ports(bf: InProcess) -> None:
    uuid = await enrol(bf, "52:54:00:aa:bb:01")
    view = NetbootView(bf.conductor.db, ENDPOINTS)
    await view.refresh()
    found = view.reservation_for("52:54:00:aa:bb:01")
    assert found is not None and found.node_id == uuid and found.hostname == "n1"
    assert view.reservation_for("52:54:00:aa:bb:02") is None


async def test_boot_chain_per_firmware(bf: InProcess) -> None:
    await enrol(bf, "52:54:00:aa:bb:01")
    view = NetbootView(bf.conductor.db, ENDPOINTS)
    await view.refresh()
    mac = "52:54:00:aa:bb:01"
    bios = view.boot_for(client(mac, 0), None)
    assert (
        bios is not None and bios.filename == "undionly.kpxe" and bios.next_server == IPv4Address("10.9.0.1")
    )
    uefi = view.boot_for(client(mac, 7), None)
    assert uefi is not None and uefi.filename == "ipxe.efi"
    http = view.boot_for(client(mac, 16, http=True), None)
    assert http is not None and http.filename == "http://10.9.0.1:8080/boot/files/ipxe.efi"
    # iPXE itself always gets the script, never a loader again: no boot loops.
    chained = view.boot_for(client(mac, 7, ipxe=True), None)
    assert chained is not None and chained.filename == f"http://10.9.0.1:8080/boot/ipxe?mac={mac}"
    assert view.boot_for(client("52:54:00:00:00:99", 7), None) is None


async def test_leases_round_trip_and_upsert(bf: InProcess) -> None:
    store = DbLeaseStore(bf.conductor.db)
    ip = IPv4Address("10.9.0.50")
    await store.commit([LeaseRecord(ip, "52:54:00:aa:bb:01", LeaseState.BOUND, 1000.0, None)])
    await store.commit([LeaseRecord(ip, "52:54:00:aa:bb:02", LeaseState.BOUND, 2000.0, "x")])
    loaded = await store.load()
    assert loaded == [LeaseRecord(ip, "52:54:00:aa:bb:02", LeaseState.BOUND, 2000.0, "x")]


async def test_events_reach_the_node_timeline(bf: InProcess) -> None:
    uuid = await enrol(bf, "52:54:00:aa:bb:01")
    sink = EventSink(bf.conductor.db, "test")
    sink.emit(uuid, "dhcp", "DISCOVER from 52:54:00:aa:bb:01 -> OFFER 10.9.0.50")
    sink.emit("00000000-0000-0000-0000-000000000000", "dhcp", "unknown node: dropped")
    await sink.flush()
    history = (await bf.client.get(f"/v1/nodes/{uuid}/history?detail=true")).json()["history"]
    assert any(e["event_type"] == "dhcp" and "OFFER 10.9.0.50" in e["event"] for e in history)


async def set_state(bf: InProcess, uuid: str, state: str) -> None:
    from sqlalchemy import update

    from bootforge.db.models import Node

    async with bf.conductor.db.write() as s:
        await s.execute(update(Node).where(Node.uuid == uuid).values(provision_state=state))
        await s.commit()


def scripted_view(bf: InProcess) -> NetbootView:
    return NetbootView(
        bf.conductor.db,
        ENDPOINTS,
        RamdiskSource("http://10.9.0.1:6385", "bootforge/vmlinuz", "bootforge/initrd", ("console=ttyS0",)),
    )


async def test_script_per_provision_state(bf: InProcess) -> None:
    mac = "52:54:00:aa:bb:01"
    uuid = await enrol(bf, mac)
    view = scripted_view(bf)

    await view.refresh()
    enrolled = view.ipxe_script({"mac": mac}, "10.9.0.50")
    # Anyone may ask with the MAC: the script does not say whose it is or its state (issue #11).
    assert "nothing to boot for this machine now" in enrolled and "n1" not in enrolled
    assert "attempt=2" in enrolled  # asks again, counting

    await set_state(bf, uuid, "deploying")
    await view.refresh()
    deploy = view.ipxe_script({"mac": mac}, "10.9.0.50")
    assert "kernel --name vmlinuz http://10.9.0.1:8080/boot/files/bootforge/vmlinuz" in deploy
    assert "bootforge.api=http://10.9.0.1:6385" in deploy and f"bootforge.node={uuid}" in deploy
    assert f"BOOTIF={mac}" in deploy and "console=ttyS0" in deploy

    await set_state(bf, uuid, "active")
    await view.refresh()
    assert "sanboot --no-describe --drive 0x80" in view.ipxe_script({"mac": mac, "platform": "pcbios"}, "")
    uefi = view.ipxe_script({"mac": mac, "platform": "efi"}, "")
    commands = [line for line in uefi.splitlines() if not line.startswith("#")]
    assert "exit 1" in commands and not any("sanboot" in line for line in commands)


async def test_unknown_machine_is_told_why(bf: InProcess) -> None:
    view = scripted_view(bf)
    await view.refresh()
    script = view.ipxe_script({"mac": "52:54:00:00:00:77"}, "10.9.0.77")
    assert "nothing to boot for this machine now (unknown MAC" in script


async def test_per_node_ramdisk_and_bad_values_never_break_the_script(bf: InProcess) -> None:
    mac = "52:54:00:aa:bb:01"
    uuid = await enrol(bf, mac)
    await bf.client.patch(
        f"/v1/nodes/{uuid}",
        json=[
            {"op": "add", "path": "/driver_info/deploy_kernel", "value": "http://10.9.0.2/k\n#!ipxe shell"},
        ],
    )
    await set_state(bf, uuid, "cleaning")
    view = scripted_view(bf)
    await view.refresh()
    script = view.ipxe_script({"mac": mac}, "")
    # The newline reaches the script only percent-encoded: no injected line.
    assert "%0A" in script and "\n#!ipxe shell" not in script
    assert script.startswith("#!ipxe") and script.count("#!ipxe") == 1


async def test_a_node_booted_from_virtual_media_is_not_handed_the_ramdisk_by_network(bf: InProcess) -> None:
    mac = "52:54:00:aa:bb:01"
    uuid = await enrol(bf, mac)
    await set_state(bf, uuid, "deploying")
    view = NetbootView(
        bf.conductor.db,
        ENDPOINTS,
        RamdiskSource("http://10.9.0.1:6385", "bootforge/vmlinuz", "bootforge/initrd"),
        boots_from_network=lambda driver, boot: False,
    )
    await view.refresh()
    script = view.ipxe_script({"mac": mac}, "10.9.0.50")
    assert "vmlinuz" not in script
    assert "nothing to boot for this machine now" in script


async def test_events_keep_their_emit_time_and_network_boot_mark(bf: InProcess) -> None:
    import datetime as dt

    from bootforge.conductor.task import NodeTask, load_node

    uuid = await enrol(bf, "52:54:00:aa:bb:01")
    sink = EventSink(bf.conductor.db, "test")
    before = dt.datetime.now(dt.UTC)
    sink.emit(uuid, "dhcp", "dhcp.ack 52:54:00:aa:bb:01: pxe BIOS boot=undionly.kpxe", network_boot=True)
    sink.emit(uuid, "http", "http GET /images/x.simg 200")  # the agent's image: not a boot
    emitted = dt.datetime.now(dt.UTC)
    # Written later than emitted: the timeline keeps when it happened, not when the batch was written.
    await sink.flush()
    task = NodeTask(bf.conductor, await load_node(bf.conductor, uuid), None, "test")
    boots = await task.network_boots_since(before)
    assert [(b.source, b.text) for b in boots] == [
        ("dhcp", "dhcp.ack 52:54:00:aa:bb:01: pxe BIOS boot=undionly.kpxe")
    ]
    assert before <= boots[0].at <= emitted
    assert await task.network_boots_since(emitted + dt.timedelta(seconds=1)) == []


# --- issue #11 finding 2: the script carries the boot token, and goes only to the leased address -----


async def set_boot(bf: InProcess, uuid: str, state: str, boot: str | None) -> None:
    from sqlalchemy import update

    from bootforge.db.models import Node

    async with bf.conductor.db.write() as s:
        internal = {"agent_boot": boot} if boot else {}
        await s.execute(
            update(Node).where(Node.uuid == uuid).values(provision_state=state, driver_internal_info=internal)
        )
        await s.commit()


def token_view(bf: InProcess, *, bind: bool) -> NetbootView:
    source = RamdiskSource(
        "http://10.9.0.1:6385", "bootforge/vmlinuz", "bootforge/initrd", (), bf.settings.secret_key_path
    )
    return NetbootView(bf.conductor.db, ENDPOINTS, source, bind_to_leases=bind)


async def test_the_ramdisk_script_carries_this_boots_token(bf: InProcess) -> None:
    from bootforge import boot_token

    mac = "52:54:00:aa:bb:01"
    uuid = await enrol(bf, mac)
    view = token_view(bf, bind=False)
    await set_boot(bf, uuid, "inspect wait", None)
    await view.refresh()
    # No boot id yet (the power-on saves it): no script that would carry a token the lookup refuses.
    assert "vmlinuz" not in view.ipxe_script({"mac": mac}, "10.9.0.50")
    await set_boot(bf, uuid, "inspect wait", "boot-1")
    await view.refresh()
    token = boot_token.for_boot(bf.settings.secret_key_path, uuid, "boot-1")
    assert f"bootforge.boot_token={token}" in view.ipxe_script({"mac": mac}, "10.9.0.50")
    assert f"bootforge.boot_token={token}" in view.grub_config({"mac": mac}, "10.9.0.50")
    await set_boot(bf, uuid, "inspect wait", "boot-2")
    await view.refresh()
    assert token not in view.ipxe_script({"mac": mac}, "10.9.0.50")


async def test_with_full_dhcp_the_script_goes_only_to_the_address_leased_to_the_mac(bf: InProcess) -> None:
    mac = "52:54:00:aa:bb:01"
    uuid = await enrol(bf, mac)
    await set_boot(bf, uuid, "wait call-back", "boot-1")
    store = DbLeaseStore(bf.conductor.db)
    far = 4_000_000_000.0
    await store.commit(
        [
            LeaseRecord(IPv4Address("10.9.0.50"), mac, LeaseState.BOUND, far, uuid),
            LeaseRecord(IPv4Address("10.9.0.51"), "52:54:00:00:00:66", LeaseState.BOUND, far, None),
            LeaseRecord(IPv4Address("10.9.0.52"), mac, LeaseState.BOUND, 1000.0, uuid),  # expired
        ]
    )
    view = token_view(bf, bind=True)
    await view.refresh()
    assert "vmlinuz" in view.ipxe_script({"mac": mac}, "10.9.0.50")
    assert "vmlinuz" in view.grub_config({"mac": mac}, "10.9.0.50")
    for stranger in ("10.9.0.51", "10.9.0.52", "10.9.0.99", ""):
        assert "boot_token" not in view.ipxe_script({"mac": mac}, stranger), stranger
        assert "boot_token" not in view.grub_config({"mac": mac}, stranger), stranger
    # A disk boot carries no secret: it is not bound.
    await set_boot(bf, uuid, "active", None)
    await view.refresh()
    assert "sanboot" in view.ipxe_script({"mac": mac, "platform": "pcbios"}, "10.9.0.99")


async def test_an_ack_binds_at_once_and_a_release_unbinds(bf: InProcess) -> None:
    mac = "52:54:00:aa:bb:01"
    uuid = await enrol(bf, mac)
    await set_boot(bf, uuid, "clean wait", "boot-1")
    view = token_view(bf, bind=True)
    await view.refresh()
    assert "vmlinuz" not in view.ipxe_script({"mac": mac}, "10.9.0.60")
    # The DHCP server's ACK event comes before the client has its address: no wait for a refresh.
    view.note_dhcp("dhcp.ack", mac, "10.9.0.60")
    assert "vmlinuz" in view.ipxe_script({"mac": mac}, "10.9.0.60")
    view.note_dhcp("dhcp.release", mac, "10.9.0.60")
    assert "vmlinuz" not in view.ipxe_script({"mac": mac}, "10.9.0.60")
