"""The kernel and the modules the ramdisk carries, with the depmod data busybox modprobe reads.

Debian's kernel package ships the modules but not modules.dep / modules.alias (depmod writes them when
the package is installed), so they are computed here from each module's .modinfo: ``depends=`` gives
the dependency closure, ``alias=`` the device ids a module drives; ``softdep=pre:`` names modules that
are shipped too, though no symbol links them (crc-t10dif wants a crct10dif implementation).

The package is read once: one pass streams it, keeps the kernel, parses every module's .modinfo and
keeps only the closure of the modules asked for; the result is cached per (package, module list).
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import re
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from bootforge.ramdisk.debs import RamdiskError, deb_members
from bootforge.ramdisk.elf import ModInfo, modinfo

__all__ = ["DEFAULT_MODULES", "Kernel", "Module", "depmod", "extract_kernel", "load_order"]

# Roots of the module set; their dependencies come along. Drivers for the NICs and storage
# controllers of common servers and of virtual machines (virtio, VMware, Hyper-V's are left out).
DEFAULT_MODULES: tuple[str, ...] = (
    # virtio (QEMU/KVM and most clouds)
    "virtio_pci", "virtio_net", "virtio_blk", "virtio_scsi", "virtio_rng",
    # Ethernet
    "e1000", "e1000e", "igb", "igc", "ixgbe", "i40e", "ice", "bnxt_en", "tg3", "r8169",
    "mlx4_en", "mlx5_core", "vmxnet3",
    # storage controllers and disks
    "ahci", "nvme", "sd_mod", "megaraid_sas", "mpt3sas", "hpsa", "smartpqi", "vmw_pvscsi",
)  # fmt: skip


@dataclass(frozen=True)
class Module:
    name: str
    path: str  # relative to /lib/modules/<version>, as in modules.dep ("kernel/drivers/...ko")
    depends: tuple[str, ...]  # hard (symbol) dependencies
    aliases: tuple[str, ...]


@dataclass(frozen=True)
class Kernel:
    version: str  # uname -r, e.g. 6.1.0-56-amd64
    vmlinuz: Path
    modules: dict[str, Module]  # name -> module, the closure only
    files: Path  # the .ko files, at <files>/<Module.path>


_MODULE_PATH = re.compile(r"^\.?/?(?:usr/)?lib/modules/([^/]+)/(kernel/.+\.ko)$")
_VMLINUZ = re.compile(r"^\.?/?boot/vmlinuz-(.+)$")


def _closure(index: dict[str, ModInfo], roots: Iterable[str]) -> dict[str, ModInfo]:
    """Every module `roots` needs, following depends= and softdep pre: (names or aliases)."""
    wanted: dict[str, ModInfo] = {}
    todo = list(roots)
    while todo:
        name = todo.pop()
        if name in wanted:
            continue
        info = index.get(name)
        if info is None:
            raise RamdiskError(f"the kernel package has no module {name} (built in, or misspelt?)")
        wanted[name] = info
        todo += info.depends
        for soft in info.softdeps:
            todo += _resolve_soft(index, soft)
    return wanted


def _resolve_soft(index: dict[str, ModInfo], name: str) -> list[str]:
    if name in index:
        return [name]
    # A softdep may name an alias ("crct10dif"): every module providing it, as modprobe would load.
    return sorted(m.name for m in index.values() if any(fnmatch.fnmatchcase(name, a) for a in m.aliases))


def _cache_key(deb: Path, roots: Sequence[str]) -> str:
    return hashlib.sha256("\0".join([deb.name, "v2", *sorted(roots)]).encode()).hexdigest()[:16]


def extract_kernel(deb: Path, cache: Path, roots: Sequence[str] = DEFAULT_MODULES) -> Kernel:
    """The kernel image and the module closure of `roots` from a linux-image-* package (cached)."""
    out = cache / f"kernel-{_cache_key(deb, roots)}"
    if not (out / "index.json").is_file():
        _extract(deb, out, roots)
    return _load(out)


def _extract(deb: Path, out: Path, roots: Sequence[str]) -> None:
    blobs: dict[str, tuple[str, bytes]] = {}  # name -> (relative path, bytes)
    index: dict[str, ModInfo] = {}
    vmlinuz: bytes | None = None
    version = ""
    for info, tar in deb_members(deb):
        if not info.isfile():
            continue
        m = _MODULE_PATH.match(info.name)
        v = _VMLINUZ.match(info.name)
        if m is None and v is None:
            continue
        f = tar.extractfile(info)
        assert f is not None
        data = f.read()
        if v is not None:
            vmlinuz, version = data, v.group(1)
        elif m is not None:
            mod = modinfo(data, os.path.basename(m.group(2))[: -len(".ko")])
            index[mod.name] = mod
            blobs[mod.name] = (m.group(2), data)
    if vmlinuz is None:
        raise RamdiskError(f"{deb.name} has no /boot/vmlinuz-*")
    chosen = _closure(index, roots)
    tmp = out.with_name(f".{out.name}.{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "files").mkdir(parents=True)
    (tmp / "vmlinuz").write_bytes(vmlinuz)
    records = []
    for name in sorted(chosen):
        rel, data = blobs[name]
        target = tmp / "files" / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        # Soft dependencies are shipped but not listed: the kernel asks for them itself (crc-t10dif
        # requests "crypto-crct10dif" through /sbin/modprobe), and any one that loads will do. As
        # hard dependencies, one failing (crct10dif-pclmul on a CPU without PCLMUL) stops the rest.
        records.append(
            {"name": name, "path": rel, "depends": chosen[name].depends, "aliases": chosen[name].aliases}
        )
    (tmp / "index.json").write_text(json.dumps({"version": version, "modules": records}, indent=1))
    try:
        tmp.rename(out)
    except OSError:  # a concurrent build published the same result
        shutil.rmtree(tmp, ignore_errors=True)


def _load(out: Path) -> Kernel:
    raw = json.loads((out / "index.json").read_text())
    modules = {
        r["name"]: Module(r["name"], r["path"], tuple(r["depends"]), tuple(r["aliases"]))
        for r in raw["modules"]
    }
    return Kernel(raw["version"], out / "vmlinuz", modules, out / "files")


def load_order(modules: dict[str, Module], name: str) -> list[str]:
    """`name` and its dependencies, each after everything it depends on (depth first, stable)."""
    order: list[str] = []
    seen: set[str] = set()

    def visit(n: str, path: tuple[str, ...]) -> None:
        if n in seen or n in path:  # a cycle (none in a sane kernel) is broken where it closes
            return
        for dep in modules[n].depends:
            if dep in modules:
                visit(dep, (*path, n))
        seen.add(n)
        order.append(n)

    visit(name, ())
    return order


def depmod(modules: dict[str, Module]) -> dict[str, bytes]:
    """modules.dep and modules.alias in the format modprobe reads (kmod's, which busybox follows).

    In modules.dep a module's line lists its whole dependency closure, the one to load first LAST.
    """
    dep_lines = []
    alias_lines = []
    for name in sorted(modules):
        order = load_order(modules, name)[:-1]
        deps = " ".join(modules[d].path for d in reversed(order))
        dep_lines.append(f"{modules[name].path}:{' ' + deps if deps else ''}")
        alias_lines += [f"alias {a} {name}" for a in modules[name].aliases]
    return {
        "modules.dep": ("\n".join(dep_lines) + "\n").encode(),
        "modules.alias": ("\n".join(alias_lines) + "\n").encode(),
    }
