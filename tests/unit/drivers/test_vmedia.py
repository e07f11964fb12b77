"""Virtual-media boot interfaces: network_data -> the agent's static network, the ISO's command line,
validate, the qemu interface against a real (paused, never booted) QEMU's CD drive over QMP, and the
redfish one against a recording virtual-media client."""

from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pycdlib
import pytest

from bootforge import boot_token
from bootforge.agent import netconfig
from bootforge.agent.netconfig import Interface, Route, StaticNet
from bootforge.config import Settings
from bootforge.drivers import base, qemu, vmedia
from bootforge.drivers import qemu_machine as vm
from bootforge.drivers.base import updated_internal
from bootforge.drivers.hardware import Drivers
from bootforge.drivers.vmedia import QemuVirtualMedia, RedfishVirtualMedia, kernel_cmdline, static_network
from bootforge.errors import DriverError, InvalidInput
from bootforge.images import bootiso

MAC = "52:54:00:77:00:01"
NODE = "7e0c0f5e-0000-4000-8000-000000000001"
NETWORK_DATA: dict[str, Any] = {
    "links": [{"id": "eth0", "type": "phy", "ethernet_mac_address": MAC.upper(), "mtu": 1500}],
    "networks": [
        {
            "id": "net0",
            "type": "ipv4",
            "link": "eth0",
            "ip_address": "10.77.0.11",
            "netmask": "255.255.255.0",
            "routes": [
                {"network": "0.0.0.0", "netmask": "0.0.0.0", "gateway": "10.77.0.1"},
                {"network": "192.0.2.0", "netmask": "255.255.255.0", "gateway": "10.77.0.254"},
            ],
        },
        {
            "id": "net1",
            "type": "ipv6",
            "link": "eth0",
            "ip_address": "2001:db8::11",
            "netmask": "ffff:ffff:ffff:ffff::",
            "routes": [{"network": "::", "netmask": "::", "gateway": "2001:db8::1"}],
        },
        {"id": "net2", "type": "ipv4_dhcp", "link": "eth0"},
    ],
    "services": [{"type": "dns", "address": "10.77.0.1"}, {"type": "ntp", "address": "10.77.0.2"}],
}


def test_network_data_becomes_the_agents_static_network() -> None:
    assert static_network(NETWORK_DATA) == StaticNet(
        (
            Interface(
                MAC,
                ("10.77.0.11/24", "2001:db8::11/64"),
                ("10.77.0.1", "2001:db8::1"),
                (Route("192.0.2.0/24", "10.77.0.254"),),
                1500,
            ),
        ),
        ("10.77.0.1",),
    )


@pytest.mark.parametrize("data", [None, {}, {"links": [], "networks": [{"type": "ipv4_dhcp", "link": "x"}]}])
def test_no_static_network_means_dhcp(data: dict[str, Any] | None) -> None:
    assert static_network(data) is None


@pytest.mark.parametrize(
    ("change", "names"),
    [
        ({"links": [{"id": "eth0", "type": "vlan", "vlan_id": 5}]}, "'vlan' link"),
        ({"links": [{"id": "other", "type": "phy", "ethernet_mac_address": MAC}]}, "names no entry"),
        ({"links": [{"id": "eth0", "type": "phy", "ethernet_mac_address": "nope"}]}, "not a MAC"),
        ({"links": [{"id": "eth0", "type": "phy", "ethernet_mac_address": MAC, "mtu": 10}]}, "MTU"),
        ({"links": "eth0"}, "links must be a list"),
        ({"networks": [{"type": "ipv4", "link": "eth0", "ip_address": "10.0.0.1"}]}, "no netmask"),
        (
            {
                "networks": [
                    {"type": "ipv4", "link": "eth0", "ip_address": "10.0.0.1", "netmask": "255.0.255.0"}
                ]
            },
            "contiguous",
        ),
        ({"networks": [{"type": "ipv4", "link": "eth0", "ip_address": "10.0.0.300/24"}]}, "ip_address"),
        ({"services": [{"type": "dns", "address": "dns.example"}]}, r"services\[0\].address"),
    ],
)
def test_network_data_the_ramdisk_cannot_use_is_refused_by_field(change: dict[str, Any], names: str) -> None:
    with pytest.raises(InvalidInput, match=names) as exc:
        static_network({**NETWORK_DATA, **change})
    assert exc.value.field == "network_data"


def test_the_iso_command_line_is_the_network_boot_one_plus_the_static_network() -> None:
    net = static_network(NETWORK_DATA)
    line = kernel_cmdline("http://10.77.0.1:6385", NODE, MAC, ["console=ttyS0,115200n8", "quiet"], net)
    assert line == (
        f"bootforge.api=http://10.77.0.1:6385 bootforge.node={NODE} BOOTIF={MAC} "
        f"bootforge.net={netconfig.encode(net) if net else ''} console=ttyS0,115200n8 quiet"
    )
    assert "bootforge.net" not in kernel_cmdline("http://a:1", NODE, MAC, [], None)


# -- the interfaces ----------------------------------------------------------------------------------


class Management:
    def __init__(self) -> None:
        self.calls: list[tuple[str, bool]] = []

    async def set_boot_device(self, task: Any, device: str, persistent: bool = False) -> None:
        self.calls.append((device, persistent))


class Task:
    def __init__(self, settings: Settings, driver_info: dict[str, Any], management: Any) -> None:
        self.settings = settings
        self.node = SimpleNamespace(
            uuid=NODE,
            driver_info=driver_info,
            driver_internal_info={"agent_boot": "b00710"},
            network_data=NETWORK_DATA,
            power_state=base.POWER_OFF,
        )
        self.driver = SimpleNamespace(management=management)
        self.events: list[str] = []

    def set_internal(self, **values: Any) -> None:
        self.node.driver_internal_info = updated_internal(self.node.driver_internal_info, values)

    async def get_ports(self) -> list[Any]:
        return [SimpleNamespace(address=MAC, pxe_enabled=True)]

    async def agent_last_seen(self) -> dt.datetime | None:
        return None

    async def record(self, event_type: str, message: str, severity: str = "info") -> None:
        self.events.append(message)

    async def save(self) -> None:
        return None


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    root = tmp_path / "boot"
    (root / "bootforge").mkdir(parents=True)
    (root / "bootforge" / "vmlinuz").write_bytes(b"kernel")
    (root / "bootforge" / "initrd").write_bytes(b"initrd")
    return Settings(
        state_dir=tmp_path / "state",
        netboot={"address": "10.77.0.1", "http": True, "http_port": 8080, "root": root},
    )


def _definition(tmp_path: Path, cdrom: bool) -> Path:
    path = tmp_path / "vm" / "vm.json"
    path.parent.mkdir(exist_ok=True)
    defn = {"name": "vmedia", "memory_mib": 64, "accel": "tcg", "cdrom": cdrom, "serial_log": "console.log"}
    path.write_text(json.dumps(defn))
    return path


def _qemu_info(tmp_path: Path, cdrom: bool = True) -> dict[str, Any]:
    return {
        "qemu_qmp_socket": str(tmp_path / "vm" / "qmp.sock"),
        "qemu_command": str(_definition(tmp_path, cdrom)),
    }


def test_validate_names_what_a_virtual_media_boot_lacks(settings: Settings, tmp_path: Path) -> None:
    iface = QemuVirtualMedia(settings)
    iface.validate(Task(settings, _qemu_info(tmp_path), Management()))  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match="CD drive") as exc:
        iface.validate(Task(settings, _qemu_info(tmp_path, cdrom=False), Management()))  # type: ignore[arg-type]
    assert exc.value.field == "driver_info.qemu_command"
    url = {**_qemu_info(tmp_path), "deploy_kernel": "http://elsewhere/vmlinuz"}
    with pytest.raises(InvalidInput, match="not a URL") as exc:
        iface.validate(Task(settings, url, Management()))  # type: ignore[arg-type]
    assert exc.value.field == "driver_info.deploy_kernel"
    (settings.netboot.root / "bootforge" / "initrd").unlink()  # type: ignore[operator]
    with pytest.raises(InvalidInput, match=r"initrd .* does not exist") as exc:
        iface.validate(Task(settings, _qemu_info(tmp_path), Management()))  # type: ignore[arg-type]
    assert exc.value.field == "driver_info.deploy_ramdisk"


def test_redfish_virtual_media_needs_the_http_boot_server(tmp_path: Path, settings: Settings) -> None:
    off = settings.model_copy(update={"netboot": settings.netboot.model_copy(update={"http": False})})
    with pytest.raises(InvalidInput, match=r"netboot\.http"):
        RedfishVirtualMedia(off).validate(Task(off, {}, Management()))  # type: ignore[arg-type]


def _iso_cmdline(path: Path) -> str:
    iso = pycdlib.PyCdlib()
    iso.open(str(path))
    try:
        import io

        out = io.BytesIO()
        iso.get_file_from_iso_fp(out, iso_path=bootiso.ISOLINUX_CFG)
    finally:
        iso.close()
    [append] = [line for line in out.getvalue().decode().splitlines() if "APPEND" in line]
    return append.split("APPEND ", 1)[1]


def _need_iso_tools() -> None:
    missing = bootiso.missing_tools()
    if missing:
        pytest.skip(f"needs {', '.join(missing)}")


@pytest.mark.qemu
async def test_qemu_virtual_media_inserts_into_a_vm_that_is_off_and_ejects(
    settings: Settings, tmp_path: Path
) -> None:
    _need_iso_tools()
    if shutil.which(vm.DEFAULT_BINARY) is None:
        pytest.skip(f"needs {vm.DEFAULT_BINARY} (Debian package qemu-system-x86)")
    info = _qemu_info(tmp_path)
    management = Management()
    task = Task(settings, info, management)
    iface = QemuVirtualMedia(settings)
    parsed = qemu.parse_driver_info(info)
    try:
        await iface.prepare_ramdisk(task)  # type: ignore[arg-type]
        iso = settings.netboot.root / "vmedia" / f"{NODE}-b00710.iso"  # type: ignore[operator]
        assert iso.is_file()
        assert task.node.driver_internal_info["vmedia_iso"] == iso.name
        assert f"bootforge.net={netconfig.encode(static_network(NETWORK_DATA))}" in _iso_cmdline(iso)  # type: ignore[arg-type]
        assert management.calls == [("cdrom", False)]
        async with qemu.qmp_session(parsed.qmp_socket) as s:
            # Started paused: bootforge counts prelaunch as "power off" until power on resets it.
            assert (await s.run("query-status"))["status"] == "prelaunch"
            [cd] = [b for b in await s.run("query-block") if b.get("qdev", "").endswith("cdrom")]
            assert cd["qdev"].endswith("cdrom") and cd["inserted"]["file"] == str(iso)
            assert cd["inserted"]["ro"] is True

        await iface.clean_up_ramdisk(task)  # type: ignore[arg-type]
        async with qemu.qmp_session(parsed.qmp_socket) as s:
            [cd] = [b for b in await s.run("query-block") if b.get("qdev", "").endswith("cdrom")]
            assert "inserted" not in cd
        assert not iso.exists()
        assert "vmedia_iso" not in task.node.driver_internal_info
        assert any("ejected" in e for e in task.events)
    finally:
        await qemu.QemuPower().set_power_state(task, base.POWER_OFF)  # type: ignore[arg-type]
    # With no VM process, clean-up still removes what is left and does not fail.
    leftover = settings.netboot.root / "vmedia" / f"{NODE}-old.iso"  # type: ignore[operator]
    leftover.write_bytes(b"x")
    await iface.clean_up_ramdisk(task)  # type: ignore[arg-type]
    assert not leftover.exists()


class RecordingMedia:
    def __init__(self) -> None:
        self.calls: list[tuple[str, ...]] = []

    async def insert_media(self, url: str, kind: str = "cd") -> None:
        self.calls.append(("insert", url, kind))

    async def eject_media(self, kind: str = "cd") -> None:
        self.calls.append(("eject", kind))


async def test_redfish_virtual_media_inserts_the_iso_url_and_ejects(settings: Settings) -> None:
    _need_iso_tools()
    media = RecordingMedia()
    management = Management()
    management.virtual_media_client = lambda task: media  # type: ignore[attr-defined]
    task = Task(settings, {}, management)
    iface = RedfishVirtualMedia(settings)
    await iface.prepare_ramdisk(task)  # type: ignore[arg-type]
    name = f"{NODE}-b00710.iso"
    assert media.calls == [("insert", f"http://10.77.0.1:8080/vmedia/{name}", "cd")]
    assert management.calls == [("cdrom", False)]
    iso = settings.netboot.root / vmedia.VMEDIA_DIR / name  # type: ignore[operator]
    assert iso.is_file()
    # The ISO carries this boot's token (issue #11 finding 2); its URL holds the random boot id.
    token = boot_token.for_boot(settings.secret_key_path, NODE, "b00710")
    assert f"bootforge.boot_token={token}" in _iso_cmdline(iso)
    await iface.prepare_instance(task)  # type: ignore[arg-type]
    await iface.clean_up_ramdisk(task)  # type: ignore[arg-type]
    assert media.calls[-1] == ("eject", "cd")
    assert management.calls[-1] == ("disk", True)
    assert not list((settings.netboot.root / vmedia.VMEDIA_DIR).iterdir())  # type: ignore[operator]


def test_the_bmc_types_offer_virtual_media_boot_and_it_is_not_a_network_boot(settings: Settings) -> None:
    drivers = Drivers(settings.model_copy(update={"enabled_hardware_types": ["qemu", "redfish"]}))
    assert "virtual-media" in drivers.get_type("qemu").supported("boot")
    assert "redfish-virtual-media" in drivers.get_type("redfish").supported("boot")
    qemu_set = drivers.for_node("qemu", {"boot": "virtual-media"})
    redfish_set = drivers.for_node("redfish", {"boot": "redfish-virtual-media"})
    assert isinstance(qemu_set.boot, QemuVirtualMedia) and not qemu_set.boot.netboot
    assert isinstance(redfish_set.boot, RedfishVirtualMedia) and not redfish_set.boot.netboot


def test_the_cd_drive_the_definition_named_wins_over_qemus_default_one() -> None:
    blocks = [
        {"device": "ide2-cd0", "qdev": "/machine/unattached/device[23]", "removable": True},
        {"device": "disk0-drive", "qdev": "/machine/peripheral/disk0/virtio-backend", "removable": False},
        {"device": "cdrom-drive", "qdev": "cdrom", "removable": True},
    ]
    assert vmedia._cd_drive(blocks, Path("/q")) == blocks[2]
    assert vmedia._drive_ref(blocks[2]) == {"id": "cdrom"}
    assert vmedia._drive_ref({"device": "ide2-cd0"}) == {"device": "ide2-cd0"}
    with pytest.raises(DriverError, match="no CD drive"):
        vmedia._cd_drive([blocks[1]], Path("/q"))
