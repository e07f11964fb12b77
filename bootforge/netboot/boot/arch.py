"""Client architectures as data: the IANA "Processor Architecture Types" registry (DHCP option 93).

Architecture support belongs in this table, not in branches scattered over the DHCP code: adding
a platform is adding a row. Values follow IANA and RFC 4578 Errata 4624 (7 = x64 UEFI). Value 9
is listed as x64 too, because old U-Boot and some firmware sent it for x86-64 even though IANA
now calls it EBC; serving an x64 loader to a real EBC client is harmless (it cannot run anyway).

`loader` is the iPXE build the raw firmware chainloads; iPXE then fetches its script over HTTP.
HTTP-boot rows (UEFI HTTPClient) take the same loader, but by URL instead of TFTP. `signed_chain`
is the firmware's Secure Boot chain (Microsoft-signed shim, then the GRUB it loads by that name):
what Secure Boot nodes get, and what a UEFI architecture without an iPXE build gets instead (ARM64:
Debian packages no arm64 iPXE, but signs shim and GRUB for it). `cpu` is the CPU architecture
under Ironic's name (properties.cpu_arch); `debian` the Debian architecture its ramdisk is built
from, which also names that ramdisk's files (ramdisk_file).
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

__all__ = [
    "ARCHES",
    "CPU_ARCHES",
    "DEFAULT_CPU",
    "Arch",
    "CpuArch",
    "Firmware",
    "arch_from_vendor_class",
    "cpu_arch",
    "lookup_arch",
    "ramdisk_file",
]


class Firmware(enum.Enum):
    BIOS = "bios"
    UEFI = "uefi"
    UBOOT = "uboot"
    OPENFIRMWARE = "openfirmware"


@dataclass(frozen=True, slots=True)
class Arch:
    code: int
    name: str
    firmware: Firmware
    http: bool  # the client is a UEFI HTTP-boot client and needs a URL, not a TFTP path
    loader: str | None  # None: we know the platform but ship nothing for it
    cpu: str | None = None  # Ironic's cpu_arch; None: not a CPU bootforge builds a ramdisk for
    signed_chain: tuple[str, ...] = ()  # (shim, the GRUB shim loads by this name), or none


X64_CHAIN = ("shimx64.efi", "grubx64.efi")
ARM64_CHAIN = ("shimaa64.efi", "grubaa64.efi")


def _rows() -> dict[int, Arch]:
    b, u, ub, of = Firmware.BIOS, Firmware.UEFI, Firmware.UBOOT, Firmware.OPENFIRMWARE
    x86, a64 = "x86_64", "aarch64"
    rows = [
        Arch(0x00, "x86-bios", b, False, "undionly.kpxe", x86),
        Arch(0x06, "ia32-uefi", u, False, "ipxe-i386.efi"),
        Arch(0x07, "x64-uefi", u, False, "ipxe.efi", x86, X64_CHAIN),
        Arch(0x09, "x64-uefi-legacy9", u, False, "ipxe.efi", x86, X64_CHAIN),
        Arch(0x0A, "arm32-uefi", u, False, "ipxe-arm32.efi"),
        Arch(0x0B, "arm64-uefi", u, False, "ipxe-arm64.efi", a64, ARM64_CHAIN),
        Arch(0x0C, "ppc-openfirmware", of, False, None),
        Arch(0x0F, "ia32-uefi-http", u, True, "ipxe-i386.efi"),
        Arch(0x10, "x64-uefi-http", u, True, "ipxe.efi", x86, X64_CHAIN),
        Arch(0x12, "arm32-uefi-http", u, True, "ipxe-arm32.efi"),
        Arch(0x13, "arm64-uefi-http", u, True, "ipxe-arm64.efi", a64, ARM64_CHAIN),
        Arch(0x14, "x86-bios-http", b, True, "ipxe.lkrn", x86),
        Arch(0x15, "arm32-uboot", ub, False, None),
        Arch(0x16, "arm64-uboot", ub, False, None, a64),
        Arch(0x17, "arm32-uboot-http", ub, True, None),
        Arch(0x18, "arm64-uboot-http", ub, True, None, a64),
        Arch(0x19, "riscv32-uefi", u, False, None),
        Arch(0x1A, "riscv32-uefi-http", u, True, None),
        Arch(0x1B, "riscv64-uefi", u, False, "ipxe-riscv64.efi"),
        Arch(0x1C, "riscv64-uefi-http", u, True, "ipxe-riscv64.efi"),
        Arch(0x27, "loongarch64-uefi", u, False, "ipxe-loong64.efi"),
        Arch(0x28, "loongarch64-uefi-http", u, True, "ipxe-loong64.efi"),
    ]
    return {row.code: row for row in rows}


ARCHES: dict[int, Arch] = _rows()


@dataclass(frozen=True, slots=True)
class CpuArch:
    """A CPU architecture bootforge builds a deploy ramdisk for."""

    cpu: str  # Ironic's properties.cpu_arch (what `uname -m` says in the ramdisk)
    debian: str  # the Debian architecture its packages come from
    # The serial console its kernel writes to when no firmware table names one (QEMU's virt
    # machine: the PL011 UART); appended after the operator's console= words, so on a machine
    # without it the kernel keeps the operator's.
    serial_console: str | None = None


CPU_ARCHES: dict[str, CpuArch] = {
    a.cpu: a for a in (CpuArch("x86_64", "amd64"), CpuArch("aarch64", "arm64", "ttyAMA0,115200"))
}
# The architecture of the unqualified ramdisk files (netboot.deploy_kernel / deploy_ramdisk as
# written): x86_64, as before architectures were told apart.
DEFAULT_CPU = "x86_64"
_CPU_ALIASES = {"amd64": "x86_64", "x64": "x86_64", "arm64": "aarch64"}


def cpu_arch(name: str) -> CpuArch | None:
    """The CpuArch for Ironic's name or Debian's ("aarch64", "arm64"); None if unknown."""
    key = name.strip().lower()
    return CPU_ARCHES.get(_CPU_ALIASES.get(key, key))


def ramdisk_file(name: str, cpu: str | None) -> str:
    """Where architecture `cpu`'s build of ramdisk file `name` lives: `name` itself for the default
    architecture (or an unknown one), else `<name's directory>/<debian arch>/<file>`
    ("bootforge/vmlinuz" -> "bootforge/arm64/vmlinuz"). URLs are returned as they are."""
    arch = cpu_arch(cpu) if cpu else None
    if arch is None or arch.cpu == DEFAULT_CPU or "://" in name:
        return name
    head, sep, tail = name.rstrip("/").rpartition("/")
    return f"{head}{sep}{arch.debian}/{tail}"


# PXE/HTTP vendor class: "PXEClient:Arch:00007:UNDI:003000" (arch in five decimal digits).
_ARCH_IN_CLASS = re.compile(rb"^(?:PXE|HTTP)Client:Arch:(\d{5})")


def lookup_arch(code: int) -> Arch | None:
    return ARCHES.get(code)


def arch_from_vendor_class(vendor_class: bytes) -> int | None:
    """The arch code embedded in option 60, for clients that omit option 93."""
    match = _ARCH_IN_CLASS.match(vendor_class)
    return int(match.group(1)) if match else None
