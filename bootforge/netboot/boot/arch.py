"""Client architectures as data: the IANA "Processor Architecture Types" registry (DHCP option 93).

Architecture support belongs in this table, not in branches scattered over the DHCP code: adding
a platform is adding a row. Values follow IANA and RFC 4578 Errata 4624 (7 = x64 UEFI). Value 9
is listed as x64 too, because old U-Boot and some firmware sent it for x86-64 even though IANA
now calls it EBC; serving an x64 loader to a real EBC client is harmless (it cannot run anyway).

`loader` is the iPXE build the raw firmware chainloads; iPXE then fetches its script over HTTP.
HTTP-boot rows (UEFI HTTPClient) take the same loader, but by URL instead of TFTP.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

__all__ = ["ARCHES", "Arch", "Firmware", "arch_from_vendor_class", "lookup_arch"]


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


def _rows() -> dict[int, Arch]:
    b, u, ub, of = Firmware.BIOS, Firmware.UEFI, Firmware.UBOOT, Firmware.OPENFIRMWARE
    rows = [
        Arch(0x00, "x86-bios", b, False, "undionly.kpxe"),
        Arch(0x06, "ia32-uefi", u, False, "ipxe-i386.efi"),
        Arch(0x07, "x64-uefi", u, False, "ipxe.efi"),
        Arch(0x09, "x64-uefi-legacy9", u, False, "ipxe.efi"),
        Arch(0x0A, "arm32-uefi", u, False, "ipxe-arm32.efi"),
        Arch(0x0B, "arm64-uefi", u, False, "ipxe-arm64.efi"),
        Arch(0x0C, "ppc-openfirmware", of, False, None),
        Arch(0x0F, "ia32-uefi-http", u, True, "ipxe-i386.efi"),
        Arch(0x10, "x64-uefi-http", u, True, "ipxe.efi"),
        Arch(0x12, "arm32-uefi-http", u, True, "ipxe-arm32.efi"),
        Arch(0x13, "arm64-uefi-http", u, True, "ipxe-arm64.efi"),
        Arch(0x14, "x86-bios-http", b, True, "ipxe.lkrn"),
        Arch(0x15, "arm32-uboot", ub, False, None),
        Arch(0x16, "arm64-uboot", ub, False, None),
        Arch(0x17, "arm32-uboot-http", ub, True, None),
        Arch(0x18, "arm64-uboot-http", ub, True, None),
        Arch(0x19, "riscv32-uefi", u, False, None),
        Arch(0x1A, "riscv32-uefi-http", u, True, None),
        Arch(0x1B, "riscv64-uefi", u, False, "ipxe-riscv64.efi"),
        Arch(0x1C, "riscv64-uefi-http", u, True, "ipxe-riscv64.efi"),
        Arch(0x27, "loongarch64-uefi", u, False, "ipxe-loong64.efi"),
        Arch(0x28, "loongarch64-uefi-http", u, True, "ipxe-loong64.efi"),
    ]
    return {row.code: row for row in rows}


ARCHES: dict[int, Arch] = _rows()

# PXE/HTTP vendor class: "PXEClient:Arch:00007:UNDI:003000" (arch in five decimal digits).
_ARCH_IN_CLASS = re.compile(rb"^(?:PXE|HTTP)Client:Arch:(\d{5})")


def lookup_arch(code: int) -> Arch | None:
    return ARCHES.get(code)


def arch_from_vendor_class(vendor_class: bytes) -> int | None:
    """The arch code embedded in option 60, for clients that omit option 93."""
    match = _ARCH_IN_CLASS.match(vendor_class)
    return int(match.group(1)) if match else None
