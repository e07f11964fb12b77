"""Small, valid inputs for the ramdisk builder's parts: ELF files, kernel modules, Debian packages."""

from __future__ import annotations

import io
import lzma
import struct
import tarfile
from pathlib import Path

import zstandard

_IDENT = b"\x7fELF\x02\x01\x01" + b"\0" * 9  # ELF64, little-endian, version 1
_BASE = 0x400000


def elf_program(needed: list[str], interpreter: str | None = None) -> bytes:
    """An ELF64 executable (or, without interpreter, a library) whose dynamic section needs `needed`."""
    strtab = b"\0" + b"".join(n.encode() + b"\0" for n in needed)
    name_offsets = []
    pos = 1
    for n in needed:
        name_offsets.append(pos)
        pos += len(n) + 1
    phnum = 3 if interpreter else 2
    strtab_off = 64 + 56 * phnum
    dynamic = b"".join(struct.pack("<qQ", 1, o) for o in name_offsets)
    dynamic += struct.pack("<qQ", 5, _BASE + strtab_off) + struct.pack("<qQ", 0, 0)
    dyn_off = strtab_off + len(strtab)
    interp = (interpreter.encode() + b"\0") if interpreter else b""
    interp_off = dyn_off + len(dynamic)
    size = interp_off + len(interp)
    header = _IDENT + struct.pack("<HHIQQQIHHHHHH", 3, 62, 1, 0, 64, 0, 0, 64, 56, phnum, 64, 0, 0)
    phdrs = struct.pack("<IIQQQQQQ", 1, 5, 0, _BASE, _BASE, size, size, 0x1000)
    phdrs += struct.pack("<IIQQQQQQ", 2, 6, dyn_off, _BASE + dyn_off, 0, len(dynamic), len(dynamic), 8)
    if interpreter:
        phdrs += struct.pack(
            "<IIQQQQQQ", 3, 4, interp_off, _BASE + interp_off, 0, len(interp), len(interp), 1
        )
    return header + phdrs + strtab + dynamic + interp


def kernel_module(modinfo: list[str]) -> bytes:
    """An ELF64 relocatable object with a .modinfo section holding the "key=value" strings."""
    info = b"".join(s.encode() + b"\0" for s in modinfo)
    shstrtab = b"\0.modinfo\0.shstrtab\0"
    info_off = 64
    shstr_off = info_off + len(info)
    shoff = shstr_off + len(shstrtab)
    shoff += -shoff % 8
    header = _IDENT + struct.pack("<HHIQQQIHHHHHH", 1, 62, 1, 0, 0, shoff, 0, 64, 0, 0, 64, 3, 2)
    body = header + info + shstrtab
    body += b"\0" * (shoff - len(body))
    sections = b"\0" * 64
    sections += struct.pack("<IIQQQQIIQQ", 1, 1, 2, 0, info_off, len(info), 0, 0, 1, 0)
    sections += struct.pack("<IIQQQQIIQQ", 10, 3, 0, 0, shstr_off, len(shstrtab), 0, 0, 1, 0)
    return body + sections


def _tar(files: dict[str, bytes], links: dict[str, str]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        dirs = sorted({str(Path(p).parent) for p in [*files, *links]} - {"."})
        for d in dirs:
            info = tarfile.TarInfo("./" + d)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        for path, data in sorted(files.items()):
            info = tarfile.TarInfo("./" + path)
            info.size, info.mode = len(data), 0o755 if path.endswith(("bin/tool", ".so")) else 0o644
            tar.addfile(info, io.BytesIO(data))
        for path, target in sorted(links.items()):
            info = tarfile.TarInfo("./" + path)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
    return out.getvalue()


def deb(path: Path, files: dict[str, bytes], links: dict[str, str] | None = None, codec: str = "xz") -> Path:
    """A Debian package (ar archive: debian-binary, control, data) holding `files` and `links`."""
    tar = _tar(files, links or {})
    data = lzma.compress(tar) if codec == "xz" else zstandard.ZstdCompressor().compress(tar)
    members = [
        ("debian-binary", b"2.0\n"),
        ("control.tar.xz", lzma.compress(_tar({"control": b"Package: fake\n"}, {}))),
        (f"data.tar.{codec}", data),
    ]
    out = bytearray(b"!<arch>\n")
    for name, body in members:
        out += f"{name:<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(body):<10}`\n".encode() + body
        if len(body) % 2:
            out += b"\n"
    path.write_bytes(bytes(out))
    return path
