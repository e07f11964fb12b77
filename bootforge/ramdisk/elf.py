"""Just enough ELF reading for the ramdisk: the shared libraries a program needs, a module's .modinfo.

Only little-endian ELF64 (x86_64) is read; anything else is reported as "not ELF" so the caller can skip
it (scripts, data files). No binutils are needed, so the build runs where readelf is not installed.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

__all__ = ["ElfInfo", "ModInfo", "elf_info", "is_elf", "modinfo"]

_MAGIC = b"\x7fELF"
_PT_LOAD, _PT_DYNAMIC, _PT_INTERP = 1, 2, 3
_DT_NULL, _DT_NEEDED, _DT_STRTAB = 0, 1, 5


@dataclass(frozen=True)
class ElfInfo:
    """What the dynamic loader needs to run a program or library."""

    needed: tuple[str, ...]  # DT_NEEDED sonames, in file order
    interpreter: str | None  # PT_INTERP (the dynamic loader) of an executable, None for libraries


@dataclass
class ModInfo:
    """The .modinfo section of a kernel module: what depmod reads to write modules.dep/alias."""

    name: str
    depends: list[str] = field(default_factory=list)
    aliases: list[str] = field(default_factory=list)
    # softdep "pre:" modules: loaded before this one, though no symbol links them (crc32c for btrfs...)
    softdeps: list[str] = field(default_factory=list)


def is_elf(data: bytes) -> bool:
    return data[:4] == _MAGIC and data[4:6] == b"\x02\x01"  # ELFCLASS64, little-endian


def _cstr(data: bytes, offset: int) -> str:
    end = data.index(b"\0", offset)
    return data[offset:end].decode("utf-8", "replace")


def elf_info(data: bytes) -> ElfInfo | None:
    """DT_NEEDED and PT_INTERP of an ELF64 executable or shared object; None if `data` is no such file.

    A static executable (busybox-static) has no dynamic segment and needs nothing.
    """
    if not is_elf(data):
        return None
    (phoff,) = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    loads: list[tuple[int, int, int]] = []  # (vaddr, offset, filesz)
    dynamic: tuple[int, int] | None = None
    interp: str | None = None
    for i in range(phnum):
        p_type, _flags, p_offset, p_vaddr, _paddr, p_filesz = struct.unpack_from(
            "<IIQQQQ", data, phoff + i * phentsize
        )
        if p_type == _PT_LOAD:
            loads.append((p_vaddr, p_offset, p_filesz))
        elif p_type == _PT_DYNAMIC:
            dynamic = (p_offset, p_filesz)
        elif p_type == _PT_INTERP:
            interp = _cstr(data, p_offset)
    if dynamic is None:
        return ElfInfo((), interp)
    needed_offsets: list[int] = []
    strtab_vaddr = 0
    offset, size = dynamic
    for pos in range(offset, offset + size, 16):
        tag, value = struct.unpack_from("<qQ", data, pos)
        if tag == _DT_NULL:
            break
        if tag == _DT_NEEDED:
            needed_offsets.append(value)
        elif tag == _DT_STRTAB:
            strtab_vaddr = value
    # DT_STRTAB is a virtual address: map it back to a file offset through the segment holding it.
    strtab = next(
        (off + strtab_vaddr - va for va, off, sz in loads if va <= strtab_vaddr < va + sz), strtab_vaddr
    )
    return ElfInfo(tuple(_cstr(data, strtab + o) for o in needed_offsets), interp)


def _section(data: bytes, wanted: str) -> bytes | None:
    (shoff,) = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)

    def header(i: int) -> tuple[int, int, int]:
        name, _type, _flags, _addr, offset, size = struct.unpack_from("<IIQQQQ", data, shoff + i * shentsize)
        return name, offset, size

    _, names_off, _ = header(shstrndx)
    for i in range(shnum):
        name, offset, size = header(i)
        if _cstr(data, names_off + name) == wanted:
            return data[offset : offset + size]
    return None


def modinfo(data: bytes, fallback_name: str) -> ModInfo:
    """Parse a .ko's .modinfo ("key=value" strings separated by NULs).

    Module names use "_" where file names may use "-" (nvme-core.ko is nvme_core); names here are
    normalised to "_", as the kernel and modprobe do.
    """
    if not is_elf(data):
        raise ValueError(f"{fallback_name} is not an ELF64 kernel module")
    section = _section(data, ".modinfo") or b""
    info = ModInfo(name=fallback_name.replace("-", "_"))
    for raw in section.split(b"\0"):
        key, sep, value = raw.decode("utf-8", "replace").partition("=")
        if not sep:
            continue
        if key == "name":
            info.name = value.replace("-", "_")
        elif key == "depends":
            info.depends += [d.replace("-", "_") for d in value.split(",") if d]
        elif key == "alias":
            info.aliases.append(value)
        elif key == "softdep":
            info.softdeps += _softdep_pre(value)
    return info


def _softdep_pre(value: str) -> list[str]:
    """The "pre:" names of "pre: a b post: c" (post-dependencies are optional extras: skipped)."""
    out: list[str] = []
    current = ""
    for word in value.split():
        if word.endswith(":"):
            current = word[:-1]
        elif current == "pre":
            out.append(word.replace("-", "_"))
    return out
