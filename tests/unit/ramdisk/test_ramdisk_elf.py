"""ELF reading: DT_NEEDED/PT_INTERP of programs and libraries, .modinfo of kernel modules."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from ramdisk_fakes import elf_program, kernel_module

from bootforge.ramdisk.elf import elf_info, is_elf, modinfo


def test_needed_libraries_and_interpreter_in_file_order() -> None:
    data = elf_program(["libm.so.6", "libc.so.6"], "/lib64/ld-linux-x86-64.so.2")
    info = elf_info(data)
    assert info is not None
    assert info.needed == ("libm.so.6", "libc.so.6")
    assert info.interpreter == "/lib64/ld-linux-x86-64.so.2"


def test_a_library_has_no_interpreter() -> None:
    lib = elf_info(elf_program(["libc.so.6"]))
    assert lib is not None and lib.needed == ("libc.so.6",) and lib.interpreter is None


@pytest.mark.parametrize("data", [b"#!/bin/sh\necho hi\n", b"", b"\x7fELF\x01\x01" + b"\0" * 60])
def test_scripts_and_32_bit_files_are_not_elf64(data: bytes) -> None:
    assert not is_elf(data)
    assert elf_info(data) is None


def test_agrees_with_readelf_on_a_real_program() -> None:
    readelf = shutil.which("readelf")
    if readelf is None:
        pytest.skip("needs readelf (Debian: binutils) to compare with")
    program = Path(sys.executable).resolve()
    out = subprocess.run([readelf, "-d", str(program)], capture_output=True, text=True, check=True).stdout
    expected = [line.split("[", 1)[1].rstrip("]") for line in out.splitlines() if "(NEEDED)" in line]
    info = elf_info(program.read_bytes())
    assert info is not None
    assert list(info.needed) == expected


def test_modinfo_names_deps_aliases_and_soft_pre_deps() -> None:
    data = kernel_module(
        [
            "license=GPL",
            "name=nvme_core",
            "depends=t10-pi,crc32c",
            "alias=pci:v00008086d*sv*sd*bc01sc08i02*",
            "alias=nvme-core",
            "softdep=pre: crct10dif post: crc64",
            "vermagic=6.1.0-56-amd64 SMP preempt mod_unload modversions ",
        ]
    )
    info = modinfo(data, "nvme-core")
    assert info.name == "nvme_core"
    assert info.depends == ["t10_pi", "crc32c"]
    assert info.aliases == ["pci:v00008086d*sv*sd*bc01sc08i02*", "nvme-core"]
    assert info.softdeps == ["crct10dif"]


def test_a_module_without_name_or_depends_uses_its_file_name() -> None:
    info = modinfo(kernel_module(["depends=", "license=GPL"]), "virtio-ring")
    assert info.name == "virtio_ring" and info.depends == [] and info.aliases == []


def test_a_module_that_is_not_elf_is_an_error() -> None:
    with pytest.raises(ValueError, match="virtio_net"):
        modinfo(b"not a module", "virtio_net")
