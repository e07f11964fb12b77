"""Virtual-media boot: the node boots the bootforge ramdisk from a virtual CD, not from the network.

For nodes on networks where bootforge runs no DHCP (or none at all): bootforge builds a bootable ISO
(bootforge.images.bootiso: BIOS and UEFI) holding the deploy kernel and initrd and the kernel
command line the network boot script would pass, plus, when the node has a `network_data`, the
agent's static network configuration (``bootforge.net=``, see bootforge/agent/netconfig.py). The ISO
is built per ramdisk boot under ``<netboot root>/vmedia/<node uuid>-<boot id>.iso``, which
bootforge's HTTP boot server serves at ``/vmedia/<name>``, and removed by clean_up_ramdisk.

- `virtual-media` (qemu hardware type): the ISO is inserted into the VM's CD drive over QMP
  (blockdev-change-medium) and the VM boots from the CD once. A VM whose process bootforge owns and
  which is off has no QMP to talk to, so its process is started *paused* (QEMU's prelaunch state,
  which bootforge counts as "power off", as a BMC's virtual media works while the host is off); the
  power on that follows resets it into the CD boot.
- `redfish-virtual-media` (redfish hardware type): the ISO's HTTP URL is inserted with the Redfish
  client's InsertMedia, the boot source set to Cd once, and the medium ejected by clean_up_ramdisk.

Both have `netboot = False`: bootforge's DHCP/TFTP/HTTP boot servers do not hand these nodes the
ramdisk, so a stray network boot cannot race the CD.
"""

from __future__ import annotations

import ipaddress
import time
import uuid as uuidlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final, Protocol

from bootforge import boot_token
from bootforge.agent import netconfig
from bootforge.config import Settings
from bootforge.drivers import base, qemu
from bootforge.drivers import qemu_machine as vm
from bootforge.drivers.agent import AGENT_BOOT, netboot_root
from bootforge.errors import DriverError, InvalidInput
from bootforge.images import bootiso
from bootforge.netboot.boot.scripts import ramdisk_kernel_args

__all__ = [
    "VMEDIA_DIR",
    "QemuVirtualMedia",
    "RedfishVirtualMedia",
    "VirtualMediaClient",
    "kernel_cmdline",
    "static_network",
]

VMEDIA_DIR: Final = "vmedia"  # under the netboot root, so the HTTP boot server serves it
VMEDIA_ISO: Final = "vmedia_iso"  # driver_internal_info: the file name of the inserted ISO
NETWORK_DATA: Final = "network_data"
# Link types whose MAC is the NIC itself; bonds and VLANs need kernel set-up the ramdisk does not do.
PHYSICAL_LINKS: Final = frozenset({"phy", "ethernet", "vif", "tap", "ovs", "bridge", "hw_veb", "dvs"})
STATIC_NETWORKS: Final = frozenset({"ipv4", "ipv6"})


# -- network_data -> the agent's static network ----------------------------------------------------


def static_network(network_data: Mapping[str, Any] | None) -> netconfig.StaticNet | None:
    """The static part of an OpenStack network_data.json (links / networks / services), or None when
    it has no static network (the ramdisk then uses DHCP). InvalidInput names what it cannot use."""
    if not network_data:
        return None
    links = {str(link.get("id")): link for link in _dicts(network_data, "links")}
    per_mac: dict[str, dict[str, Any]] = {}
    dns: list[str] = []
    for i, net in enumerate(_dicts(network_data, "networks")):
        where = f"network_data.networks[{i}]"
        if net.get("type") not in STATIC_NETWORKS:
            continue  # ipv4_dhcp, ipv6_slaac, ...: nothing to configure by hand
        link = links.get(str(net.get("link")))
        if link is None:
            raise _bad(f"{where}.link {net.get('link')!r} names no entry of network_data.links")
        if link.get("type") not in PHYSICAL_LINKS:
            raise _bad(
                f"{where} is on a {link.get('type')!r} link; the ramdisk's static network supports "
                f"plain NICs only ({', '.join(sorted(PHYSICAL_LINKS))})"
            )
        mac = _checked(where, netconfig.canonical_mac, str(link.get("ethernet_mac_address", "")))
        nic = per_mac.setdefault(mac, {"addresses": [], "gateways": [], "routes": [], "mtu": link.get("mtu")})
        address = _address(where, net)
        nic["addresses"].append(address)
        for j, route in enumerate(net.get("routes") or []):
            _route(f"{where}.routes[{j}]", route, nic)
        for server in net.get("dns_nameservers") or []:
            dns.append(_checked(f"{where}.dns_nameservers", netconfig.canonical_address, str(server)))
    if not per_mac:
        return None
    for i, service in enumerate(_dicts(network_data, "services")):
        if service.get("type") == "dns":
            where = f"network_data.services[{i}].address"
            dns.append(_checked(where, netconfig.canonical_address, str(service.get("address"))))
    interfaces = []
    for mac, nic in per_mac.items():
        mtu = nic["mtu"]
        if mtu is not None and (not isinstance(mtu, int) or not 68 <= mtu <= 65535):
            raise _bad(f"network_data.links: the MTU of {mac} must be a number in [68, 65535], not {mtu!r}")
        gateways = nic["gateways"]
        families = [ipaddress.ip_address(g).version for g in gateways]
        if len(set(families)) != len(families):
            raise _bad(f"network_data: the networks of {mac} give two default routes of one address family")
        interfaces.append(
            netconfig.Interface(mac, tuple(nic["addresses"]), tuple(gateways), tuple(nic["routes"]), mtu)
        )
    return netconfig.StaticNet(tuple(interfaces), tuple(dict.fromkeys(dns)))


def _dicts(network_data: Mapping[str, Any], key: str) -> list[Mapping[str, Any]]:
    value = network_data.get(key) or []
    if not isinstance(value, list) or not all(isinstance(v, Mapping) for v in value):
        raise _bad(f"network_data.{key} must be a list of objects")
    return value


def _bad(message: str) -> InvalidInput:
    return InvalidInput(message, NETWORK_DATA)


def _checked(where: str, canonical: Any, value: str) -> str:
    try:
        result: str = canonical(value)
    except netconfig.NetConfigError as e:
        raise _bad(f"{where}: {e}") from None
    return result


def _prefix(where: str, netmask: Any, version: int) -> int:
    """A prefix length from a netmask ("255.255.255.0", "ffff:ffff::") or a length (24, "64")."""
    text = str(netmask)
    if text.isdigit() and int(text) <= (32 if version == 4 else 128):
        return int(text)
    try:
        mask = int(ipaddress.ip_address(text))
    except ValueError:
        raise _bad(f"{where}.netmask {netmask!r} is not a netmask") from None
    bits = 32 if version == 4 else 128
    length = bin(mask)[2:].zfill(bits).rstrip("0")
    if "0" in length or ipaddress.ip_address(text).version != version:
        raise _bad(f"{where}.netmask {netmask!r} is not a contiguous IPv{version} netmask")
    return len(length)


def _address(where: str, net: Mapping[str, Any]) -> str:
    raw = str(net.get("ip_address") or "")
    if not raw:
        raise _bad(f"{where} is a static network without ip_address")
    if "/" not in raw:
        version = 6 if net.get("type") == "ipv6" else 4
        if net.get("netmask") is None:
            raise _bad(f"{where} has no netmask")
        raw = f"{raw}/{_prefix(where, net['netmask'], version)}"
    return _checked(f"{where}.ip_address", netconfig.canonical_interface, raw)


def _route(where: str, route: Mapping[str, Any], nic: dict[str, Any]) -> None:
    gateway = _checked(f"{where}.gateway", netconfig.canonical_address, str(route.get("gateway")))
    version = ipaddress.ip_address(gateway).version
    network = str(route.get("network") or ("0.0.0.0" if version == 4 else "::"))
    cidr = network if "/" in network else f"{network}/{_prefix(where, route.get('netmask', 0), version)}"
    net = _checked(f"{where}.network", netconfig.canonical_network, cidr)
    if ipaddress.ip_network(net).prefixlen == 0:
        if gateway not in nic["gateways"]:
            nic["gateways"].append(gateway)
    else:
        nic["routes"].append(netconfig.Route(net, gateway))


# -- the ISO ---------------------------------------------------------------------------------------


def kernel_cmdline(
    api_url: str,
    node_uuid: str,
    mac: str | None,
    extra: Sequence[str],
    net: netconfig.StaticNet | None,
    boot_token: str | None = None,
) -> str:
    """The ramdisk's command line on the ISO: what the network boot passes, plus bootforge.net."""
    more = {"net": netconfig.encode(net)} if net is not None else {}
    args = ramdisk_kernel_args(api_url, node_uuid, mac, extra, boot_token=boot_token, **more)
    return " ".join(key if value is None else f"{key}={value}" for key, value in args)


class _VirtualMediaBase(base.BootInterface):
    netboot = False

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def get_properties(self) -> dict[str, str]:
        return {
            "deploy_kernel": "The ramdisk's kernel: a file under the netboot root. Optional.",
            "deploy_ramdisk": "The ramdisk's initrd: a file under the netboot root. Optional.",
        }

    def validate(self, task: base.Task) -> None:
        self._ramdisk_files(task)
        static_network(task.node.network_data)
        missing = bootiso.missing_tools()
        if missing:
            raise InvalidInput(
                f"virtual-media boot needs {', '.join(missing)} on the conductor", "boot_interface"
            )

    def _ramdisk_files(self, task: base.Task) -> tuple[Path, Path]:
        info = task.node.driver_info
        root = netboot_root(self.settings)
        found = []
        for key, default in (
            ("deploy_kernel", self.settings.netboot.deploy_kernel),
            ("deploy_ramdisk", self.settings.netboot.deploy_ramdisk),
        ):
            ref = str(info.get(key) or default)
            if "://" in ref:
                raise InvalidInput(
                    f"virtual-media boot puts the ramdisk on an ISO built here: {key} must be a file under "
                    f"the netboot root {root}, not a URL",
                    f"driver_info.{key}",
                )
            path = root / ref
            if not path.is_file():
                what = "kernel" if key == "deploy_kernel" else "initrd"
                raise InvalidInput(
                    f"the bootforge ramdisk's {what} {path} does not exist: "
                    "build it with `bootforge ramdisk build`",
                    f"driver_info.{key}",
                )
            found.append(path)
        return found[0], found[1]

    def _iso_dir(self) -> Path:
        return netboot_root(self.settings) / VMEDIA_DIR

    async def _build_iso(self, task: base.Task) -> Path:
        """Build this ramdisk boot's ISO (older ones of the node are removed first)."""
        kernel, initrd = self._ramdisk_files(task)
        net = static_network(task.node.network_data)
        mac = await self._boot_mac(task, net)
        boot_id = str(task.node.driver_internal_info.get(AGENT_BOOT) or uuidlib.uuid4())
        # The ISO carries the boot token: its URL (and file name) holds the random boot id, so
        # nobody can guess it from the node's UUID (the HTTP boot server lists no directory).
        token = (
            boot_token.for_boot(self.settings.secret_key_path, task.node.uuid, boot_id)
            if self.settings.agent.require_boot_token
            else None
        )
        cmdline = kernel_cmdline(
            self.settings.public_url, task.node.uuid, mac, self.settings.netboot.kernel_args, net, token
        )
        self._remove_isos(task)
        output = self._iso_dir() / f"{task.node.uuid}-{boot_id}.iso"
        try:
            built = await bootiso.build_boot_iso(kernel, initrd, cmdline, output)
        except bootiso.BootIsoError as e:
            raise DriverError(f"cannot build the virtual-media ISO: {e}") from None
        task.set_internal(**{VMEDIA_ISO: output.name})
        how = "static network " + netconfig.encode(net) if net else "DHCP"
        await task.record(
            "boot",
            f"virtual media: built {output.name} ({built.size / 2**20:.1f} MiB) in {built.seconds:.1f} s; "
            f"the ramdisk will use {how}",
        )
        return output

    async def _boot_mac(self, task: base.Task, net: netconfig.StaticNet | None) -> str | None:
        """The MAC the agent looks its node up by (BOOTIF): a PXE-enabled port's, else the first
        static interface's."""
        ports = sorted(await task.get_ports(), key=lambda p: (not p.pxe_enabled, p.address))
        if ports:
            return ports[0].address.lower()
        return net.interfaces[0].mac if net else None

    def _remove_isos(self, task: base.Task) -> None:
        for iso in self._iso_dir().glob(f"{task.node.uuid}-*.iso"):
            iso.unlink(missing_ok=True)

    async def prepare_instance(self, task: base.Task) -> None:
        await task.driver.management.set_boot_device(task, "disk", persistent=True)


# -- qemu: the VM's CD drive over QMP --------------------------------------------------------------


def _has_cdrom(info: qemu.QemuInfo) -> bool | None:
    """Whether the VM is defined with a CD drive; None when only the running VM can tell."""
    if info.definition is not None:
        try:
            defn = vm.load_definition(info.definition, info.boot_mode)
        except vm.QemuError as e:
            raise InvalidInput(f"qemu driver_info qemu_command: {e}", "driver_info") from None
        return defn.cdrom or any(d.media == "cdrom" for d in defn.disks)
    if info.argv is not None:
        words = " ".join(info.argv)
        return any(sign in words for sign in ("-cdrom", "ide-cd", "scsi-cd", "media=cdrom"))
    return None


def _cd_drive(blocks: Any, where: Path) -> dict[str, Any]:
    """The CD drive in a query-block reply: a removable drive, preferring one with a device id.

    Without -nodefaults QEMU adds a CD drive of its own to PC machines; its device has no id and is
    not among the boot devices the qemu driver orders, so a drive the VM definition named comes first.
    """
    removable = [
        b for b in (blocks if isinstance(blocks, list) else []) if isinstance(b, dict) and b.get("removable")
    ]
    if not removable:
        raise DriverError(f'the VM at {where} has no CD drive: add one to its definition ("cdrom": true)')
    return min(removable, key=lambda b: str(b.get("qdev", "")).startswith("/machine/unattached/"))


def _drive_ref(block: Mapping[str, Any]) -> dict[str, str]:
    # A drive attached to a device is named by the device's id; an older one only by its backend.
    qdev = block.get("qdev")
    return {"id": str(qdev)} if qdev else {"device": str(block.get("device"))}


class QemuVirtualMedia(_VirtualMediaBase):
    """`virtual-media` for QEMU VMs: the ISO goes into the VM's CD drive over QMP."""

    name = "virtual-media"

    def __init__(self, settings: Settings, qmp_timeout: float = qemu.QMP_TIMEOUT) -> None:
        super().__init__(settings)
        self.qmp_timeout = qmp_timeout

    def validate(self, task: base.Task) -> None:
        info = qemu.parse_driver_info(task.node.driver_info)
        if _has_cdrom(info) is False:
            raise InvalidInput(
                'virtual-media boot needs a CD drive in the VM: add "cdrom": true to its definition '
                "(or an ide-cd / scsi-cd device to qemu_command)",
                "driver_info.qemu_command",
            )
        super().validate(task)

    async def prepare_ramdisk(self, task: base.Task) -> None:
        info = qemu.parse_driver_info(task.node.driver_info)
        iso = await self._build_iso(task)
        try:
            await self._ensure_process(info)
            async with qemu.qmp_session(info.qmp_socket, self.qmp_timeout) as s:
                drive = _cd_drive(await s.run("query-block"), info.qmp_socket)
                args = {
                    **_drive_ref(drive),
                    "filename": str(iso),
                    "format": "raw",
                    "read-only-mode": "read-only",
                }
                await s.run("blockdev-change-medium", args)
        except qemu.VmGone as e:
            self._remove_isos(task)
            raise DriverError(f"cannot insert the virtual-media ISO: the VM is not running ({e})") from None
        except BaseException:
            self._remove_isos(task)
            raise
        await task.record("boot", f"virtual media: {iso.name} inserted into {_drive_ref(drive)}")
        # Once: a machine that reboots later falls back to its normal order, not into the ramdisk.
        await task.driver.management.set_boot_device(task, "cdrom", persistent=False)

    async def _ensure_process(self, info: qemu.QemuInfo) -> None:
        """An owned VM that is off gets its process started paused, so its CD drive exists."""
        if not info.owned or info.pid_file is None:
            return
        pid = vm.read_pid(info.pid_file)
        if pid is not None and vm.pid_alive(pid):
            return
        await qemu.start_process(info, "cannot start the VM (paused) to insert the virtual-media ISO")

    async def clean_up_ramdisk(self, task: base.Task) -> None:
        info = qemu.parse_driver_info(task.node.driver_info)
        try:
            async with qemu.qmp_session(info.qmp_socket, self.qmp_timeout) as s:
                drive = _cd_drive(await s.run("query-block"), info.qmp_socket)
                if drive.get("inserted"):
                    # force: a guest that locked the tray (a mounted CD) must not keep the medium.
                    await s.run("eject", {**_drive_ref(drive), "force": True})
                    await task.record("boot", "virtual media: ejected")
        except qemu.VmGone:
            pass  # no VM process: no medium (a powered-off owned VM has no drive state at all)
        finally:
            self._remove_isos(task)
            task.set_internal(**{VMEDIA_ISO: None})


# -- redfish: InsertMedia with the ISO's HTTP URL --------------------------------------------------


class VirtualMediaClient(Protocol):
    """What redfish-virtual-media needs of the Redfish driver (bootforge.drivers.redfish)."""

    async def insert_media(self, url: str, kind: str = "cd") -> None: ...

    async def eject_media(self, kind: str = "cd") -> None: ...


class RedfishVirtualMedia(_VirtualMediaBase):
    """`redfish-virtual-media`: the BMC fetches the ISO from bootforge's HTTP boot server."""

    name = "redfish-virtual-media"

    def validate(self, task: base.Task) -> None:
        nb = self.settings.netboot
        if not nb.http or not nb.address:
            raise InvalidInput(
                "redfish-virtual-media serves the ISO over bootforge's HTTP boot server: set netboot.http "
                "= true and netboot.address (an address the BMC can reach)",
                "boot_interface",
            )
        super().validate(task)

    def iso_url(self, iso: Path) -> str:
        nb = self.settings.netboot
        return f"http://{nb.address}:{nb.http_port}/{VMEDIA_DIR}/{iso.name}"

    def _client(self, task: base.Task) -> VirtualMediaClient:
        management = task.driver.management
        client = getattr(management, "virtual_media_client", None)
        if client is None:
            raise DriverError(
                f"the {management.name} management interface has no virtual media: "
                "redfish-virtual-media needs the redfish hardware type"
            )
        result: VirtualMediaClient = client(task)
        return result

    async def prepare_ramdisk(self, task: base.Task) -> None:
        iso = await self._build_iso(task)
        url = self.iso_url(iso)
        started = time.monotonic()
        try:
            await self._client(task).insert_media(url, kind="cd")
        except BaseException:
            self._remove_isos(task)
            raise
        await task.record("boot", f"virtual media: BMC inserted {url} in {time.monotonic() - started:.1f} s")
        await task.driver.management.set_boot_device(task, "cdrom", persistent=False)

    async def clean_up_ramdisk(self, task: base.Task) -> None:
        try:
            if task.node.driver_internal_info.get(VMEDIA_ISO):
                await self._client(task).eject_media(kind="cd")
                await task.record("boot", "virtual media: ejected")
        finally:
            self._remove_isos(task)
            task.set_internal(**{VMEDIA_ISO: None})
