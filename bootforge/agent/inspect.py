"""The inspect command: the machine's inventory, in the names Ironic's agent (IPA) uses.

Everything is read from files under ctx.sys_root (/proc and /sys; a fake tree in tests). Two facts
are not in any file and come from the running kernel instead, so only when sys_root is the real
root: IPv4 addresses (ioctl SIOCGIFADDR) and LLDP neighbours (raw sockets, see lldp.py).

"""

from __future__ import annotations

import fcntl
import os
import socket
import struct

from . import __version__, log
from .cmdline import boot_mac, interface_names
from .common import CommandError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from .common import Context, Progress
    from .lldp import Lldpdu

MIB = 1024 * 1024
SIOCGIFADDR = 0x8915
IFF_UP = 0x1
DEFAULT_LLDP_WAIT = 3.0
# MemTotal leaves out what the kernel reserved at boot; rounding up to a memory block recovers the
# installed size on the machines we know (128 MiB is the x86_64 block size).
MEMORY_ROUNDING = 128 * MIB


def run(args: dict[str, Any], ctx: Context, progress: Progress) -> dict[str, Any]:
    """Inventory plus plugin data; waits up to args["lldp_wait"] seconds for LLDP frames."""
    lldp_wait = args.get("lldp_wait", DEFAULT_LLDP_WAIT)
    if isinstance(lldp_wait, bool) or not isinstance(lldp_wait, int | float) or lldp_wait < 0:
        raise CommandError(f"inspect: lldp_wait must be a number of seconds >= 0, not {lldp_wait!r}")
    progress(0, 2, "reading the inventory")
    inventory = collect(ctx)
    progress(1, 2, f"listening for LLDP for up to {lldp_wait:g} s")
    raw: dict[str, list[list[Any]]] = {}
    if lldp_wait > 0:
        neighbours = _listen_lldp(ctx, inventory["interfaces"], float(lldp_wait))
        for iface in inventory["interfaces"]:
            found = neighbours.get(iface["name"])
            if found is not None:
                iface["lldp"] = found.to_inventory()
                raw[iface["name"]] = found.raw()
    progress(2, 2, "inventory done")
    return {"inventory": inventory, "plugin_data": {"agent_version": __version__, "lldp_raw": raw}}


def collect(ctx: Context) -> dict[str, Any]:
    """The contract's INVENTORY for the machine under ctx.sys_root."""
    root = str(ctx.sys_root)
    interfaces = [_interface(root, name, _is_live(root)) for name in interface_names(root)]
    return {
        "cpu": cpu(root),
        "memory": memory(root),
        "disks": _disks(ctx),
        "interfaces": interfaces,
        "system_vendor": {
            "manufacturer": _dmi(root, "sys_vendor"),
            "product_name": _dmi(root, "product_name"),
            "serial_number": _dmi(root, "product_serial"),
        },
        "boot": {
            "current_boot_mode": "uefi" if os.path.isdir(_path(root, "sys/firmware/efi")) else "bios",
            "pxe_interface": _pxe_mac(ctx),
        },
        "hostname": hostname(root),
        "bmc_address": bmc_address(root),
    }


# -- reading files ---------------------------------------------------------------------------------


def _path(root: str, relative: str) -> str:
    return os.path.join(root, relative)


def _read(path: str) -> str | None:
    """A sysfs/procfs attribute, stripped; None if absent or unreadable (EINVAL on a down link...)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read().strip()
    except OSError:
        return None


def _is_live(root: str) -> bool:
    return os.path.realpath(root) == "/"


# -- CPU and memory --------------------------------------------------------------------------------


def cpu(root: str) -> dict[str, Any]:
    entries = [_fields(block) for block in (_read(_path(root, "proc/cpuinfo")) or "").split("\n\n")]
    processors = [e for e in entries if "processor" in e]
    first = processors[0] if processors else {}
    # x86 says "model name" and "flags"; arm64 has no model name and says "Features".
    flags = first.get("flags") or first.get("Features") or ""
    max_khz = _read(_path(root, "sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq"))
    frequency = str(int(max_khz) // 1000) if max_khz and max_khz.isdigit() else first.get("cpu MHz", "")
    return {
        "count": len(processors) or _online_cpus(root),
        "architecture": os.uname().machine,
        "model_name": first.get("model name") or first.get("Processor") or "",
        "frequency": frequency,
        "flags": flags.split(),
    }


def _fields(block: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    for line in block.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip(), value.strip())
    return fields


def _online_cpus(root: str) -> int:
    """Count the CPUs in sys/devices/system/cpu/online ("0-3,6")."""
    count = 0
    for part in (_read(_path(root, "sys/devices/system/cpu/online")) or "").split(","):
        low, _, high = part.partition("-")
        if low.isdigit() and (not high or high.isdigit()):
            count += int(high or low) - int(low) + 1
    return count


def memory(root: str) -> dict[str, int]:
    total_kib = 0
    for line in (_read(_path(root, "proc/meminfo")) or "").splitlines():
        key, _, value = line.partition(":")
        if key == "MemTotal" and value.split() and value.split()[0].isdigit():
            total_kib = int(value.split()[0])
    total = total_kib * 1024
    rounded_mb = -(-total // MEMORY_ROUNDING) * MEMORY_ROUNDING // MIB
    physical_mb = _dmi_memory_mb(root) or _memory_blocks_mb(root) or rounded_mb
    return {"total": total, "physical_mb": physical_mb}


def _dmi_memory_mb(root: str) -> int:
    """Sum of the SMBIOS type 17 (memory device) sizes, as dmidecode would print them; 0 if none."""
    entries = _path(root, "sys/firmware/dmi/entries")
    try:
        names = [n for n in os.listdir(entries) if n.startswith("17-")]
    except OSError:
        return 0
    total = 0
    for name in names:
        try:
            with open(os.path.join(entries, name, "raw"), "rb") as f:
                total += _memory_device_mb(f.read())
        except OSError:
            continue
    return total


def _memory_device_mb(raw: bytes) -> int:
    """Size of one type 17 structure (SMBIOS 3.x, 7.18.5): 0 for an empty slot or a bad record."""
    if len(raw) < 0x0E or raw[0] != 17 or raw[1] > len(raw):
        return 0
    size = int.from_bytes(raw[0x0C:0x0E], "little")
    if size in (0, 0xFFFF):
        return 0
    if size == 0x7FFF:  # the real size is in the Extended Size field (bits 0-30, MiB)
        if raw[1] < 0x20:
            return 0
        return int.from_bytes(raw[0x1C:0x20], "little") & 0x7FFFFFFF
    if size & 0x8000:  # granularity bit: KiB
        return (size & 0x7FFF) // 1024
    return size


def _memory_blocks_mb(root: str) -> int:
    """Online memory blocks times the block size; 0 without the memory sysfs."""
    base = _path(root, "sys/devices/system/memory")
    block = _read(os.path.join(base, "block_size_bytes"))
    try:
        names = os.listdir(base) if block else []
        size = int(block, 16) if block else 0
    except (OSError, ValueError):
        return 0
    online = sum(1 for n in names if n.startswith("memory") and _read(os.path.join(base, n, "online")) == "1")
    return online * size // MIB


# -- disks, DMI, boot ----------------------------------------------------------------------------------


def _disks(ctx: Context) -> list[dict[str, Any]]:
    try:
        from .disks import list_disks
    except ModuleNotFoundError as exc:
        # Only while disks.py is being written next to this module; any other missing module is a bug.
        if exc.name != f"{__package__}.disks":
            raise
        log("inspect: disks module missing; reporting no disks")
        return []
    return [disk.to_inventory() for disk in list_disks(ctx)]


def _dmi(root: str, name: str) -> str | None:
    return _read(_path(root, f"sys/class/dmi/id/{name}")) or None


def _pxe_mac(ctx: Context) -> str | None:
    return boot_mac(ctx.cmdline)


def hostname(root: str) -> str:
    name = _read(_path(root, "proc/sys/kernel/hostname"))
    if name is None and _is_live(root):
        name = socket.gethostname()
    return name or ""


# -- network interfaces --------------------------------------------------------------------------------


def _interface(root: str, name: str, live: bool) -> dict[str, Any]:
    base = _path(root, f"sys/class/net/{name}")
    speed = _read(os.path.join(base, "speed"))
    driver = os.path.join(base, "device", "driver")
    return {
        "name": name,
        "mac_address": (_read(os.path.join(base, "address")) or "").lower(),
        "ipv4_address": ipv4_address(name) if live else None,
        # -1 (or EINVAL) while the link is down: unknown, not zero.
        "speed_mbps": int(speed) if speed and speed.isdigit() and int(speed) > 0 else None,
        "has_carrier": _read(os.path.join(base, "carrier")) == "1",
        "driver": os.path.basename(os.path.realpath(driver)) if os.path.exists(driver) else None,
        "lldp": None,
    }


def ipv4_address(ifname: str) -> str | None:
    """The interface's (first) IPv4 address from the kernel, or None (no address, no such device)."""
    # struct ifreq: 16 bytes of name, then the union; ifr_addr is a sockaddr_in (family, port, addr).
    request = struct.pack("16s24x", ifname.encode()[:15])
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            reply = fcntl.ioctl(sock.fileno(), SIOCGIFADDR, request)
        except OSError:
            return None
    return socket.inet_ntoa(reply[20:24])


def _is_up(root: str, name: str) -> bool:
    flags = _read(_path(root, f"sys/class/net/{name}/flags"))
    try:
        return flags is not None and bool(int(flags, 16) & IFF_UP)
    except ValueError:
        return False


def _listen_lldp(ctx: Context, interfaces: list[dict[str, Any]], wait: float) -> dict[str, Lldpdu]:
    from . import lldp

    root = str(ctx.sys_root)
    up = [iface["name"] for iface in interfaces if _is_up(root, iface["name"])]
    if not _is_live(root) or not up:
        return {}
    heard, errors = lldp.listen(up, wait)
    for name, error in sorted(errors.items()):
        log(f"inspect: no LLDP on {name}: {error}")
    return heard


# -- the BMC's address -----------------------------------------------------------------------------

IPMI_DEVICES = ("dev/ipmi0", "dev/ipmi/0", "dev/ipmidev/0")
IPMITOOL_TIMEOUT = 10.0
# LAN channels tried after the default one (vendors put the BMC's LAN on 1, 2, 8 ...), as far as
# Ironic's agent looks.
IPMI_CHANNELS = tuple(range(1, 12))
SMBIOS_HOST_INTERFACE = 42
REDFISH_OVER_IP = 0x04


def bmc_address(root: str) -> str | None:
    """The BMC's address: `ipmitool lan print` when the machine has an IPMI device and the ramdisk has
    ipmitool, else the Redfish service address of the SMBIOS Redfish host interface (type 42), else None."""
    found = None
    if any(os.path.exists(_path(root, d)) for d in IPMI_DEVICES) and _is_live(root):
        found = _ipmitool_address()
    return found or redfish_host_interface_address(root)


def _ipmitool_address() -> str | None:
    import shutil
    import subprocess

    tool = shutil.which("ipmitool")
    if tool is None:
        log("inspect: the machine has an IPMI device but the ramdisk has no ipmitool: no BMC address")
        return None
    for channel in ("", *map(str, IPMI_CHANNELS)):
        argv = [tool, "lan", "print", *([channel] if channel else [])]
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=IPMITOOL_TIMEOUT, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            log(f"inspect: {' '.join(argv)}: {exc}")
            return None
        address = parse_lan_print(done.stdout) if done.returncode == 0 else None
        if address:
            return address
    return None


def parse_lan_print(text: str) -> str | None:
    """The "IP Address" of `ipmitool lan print` output; None when unset (0.0.0.0) or absent."""
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() == "IP Address":
            value = value.strip()
            try:
                packed = socket.inet_aton(value)
            except OSError:
                return None
            return None if packed == bytes(4) or value.count(".") != 3 else value
    return None


def redfish_host_interface_address(root: str) -> str | None:
    """The Redfish service's IP address from an SMBIOS type 42 record (DSP0270), if the firmware has one."""
    entries = _path(root, "sys/firmware/dmi/entries")
    try:
        names = sorted(n for n in os.listdir(entries) if n.startswith(f"{SMBIOS_HOST_INTERFACE}-"))
    except OSError:
        return None
    for name in names:
        try:
            with open(os.path.join(entries, name, "raw"), "rb") as f:
                address = parse_host_interface(f.read())
        except OSError:
            continue
        if address:
            return address
    return None


def parse_host_interface(raw: bytes) -> str | None:
    """Type 42: header (4), interface type (1), data length n (1), data (n), protocol count (1), then
    records of protocol type (1), length m (1), data (m). Redfish over IP's data: service UUID (16),
    host IP assignment (1), host address format (1), host address (16), host mask (16), service
    discovery (1), service address format (1: 1 IPv4, 2 IPv6), service address (16), ..."""
    if len(raw) < 7 or raw[0] != SMBIOS_HOST_INTERFACE or raw[1] > len(raw):
        return None
    end = raw[1]
    at = 6 + raw[5]
    if at >= end:
        return None
    count, at = raw[at], at + 1
    for _ in range(count):
        if at + 2 > end:
            return None
        kind, length = raw[at], raw[at + 1]
        data = raw[at + 2 : at + 2 + length]
        at += 2 + length
        if kind != REDFISH_OVER_IP or len(data) < 68:
            continue
        fmt, address = data[51], data[52:68]
        if fmt == 1 and address[:4] != bytes(4):
            return socket.inet_ntop(socket.AF_INET, address[:4])
        if fmt == 2 and address != bytes(16):
            return socket.inet_ntop(socket.AF_INET6, address)
    return None
