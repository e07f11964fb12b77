"""Kernel modules: the closure taken out of the kernel package, and the depmod files modprobe reads."""

from __future__ import annotations

from pathlib import Path

import pytest
from ramdisk_fakes import deb, kernel_module

from bootforge.ramdisk.debs import RamdiskError
from bootforge.ramdisk.kmod import Module, depmod, extract_kernel, load_order

KDIR = "lib/modules/6.1.0-9-amd64/kernel"


def _kernel_deb(tmp_path: Path) -> Path:
    mods = {
        "drivers/net/virtio_net.ko": [
            "name=virtio_net",
            "depends=net_failover,virtio",
            "alias=virtio:d00000001v*",
        ],
        "drivers/net/net_failover.ko": ["name=net_failover", "depends=failover"],
        "net/core/failover.ko": ["name=failover", "depends="],
        "drivers/virtio/virtio.ko": ["name=virtio", "depends="],
        "drivers/scsi/sd_mod.ko": ["name=sd_mod", "depends=t10-pi"],
        "block/t10-pi.ko": ["name=t10_pi", "depends=crc-t10dif"],
        "lib/crc-t10dif.ko": ["name=crc_t10dif", "depends=", "softdep=pre: crct10dif"],
        "crypto/crct10dif_generic.ko": [
            "name=crct10dif_generic",
            "alias=crct10dif",
            "alias=crypto-crct10dif",
        ],
        "arch/x86/crypto/crct10dif-pclmul.ko": [
            "name=crct10dif_pclmul",
            "alias=crct10dif",
            "alias=crypto-crct10dif",
        ],
        "drivers/net/ethernet/intel/e1000e/e1000e.ko": [
            "name=e1000e",
            "alias=pci:v00008086d000010D3sv*sd*bc*sc*i*",
        ],
    }
    files = {f"{KDIR}/{path}": kernel_module(info) for path, info in mods.items()}
    files["boot/vmlinuz-6.1.0-9-amd64"] = b"bzImage"
    files["usr/share/doc/linux-image/changelog.gz"] = b"x"
    return deb(tmp_path / "linux-image-6.1.0-9-amd64_6.1.1-1_amd64.deb", files)


def test_extract_keeps_the_kernel_and_the_closure_only(tmp_path: Path) -> None:
    k = extract_kernel(_kernel_deb(tmp_path), tmp_path / "cache", ["virtio_net", "sd_mod"])
    assert k.version == "6.1.0-9-amd64"
    assert k.vmlinuz.read_bytes() == b"bzImage"
    # e1000e was not asked for; both crct10dif implementations come with crc-t10dif's softdep alias.
    assert sorted(k.modules) == [
        "crc_t10dif", "crct10dif_generic", "crct10dif_pclmul", "failover", "net_failover",
        "sd_mod", "t10_pi", "virtio", "virtio_net",
    ]  # fmt: skip
    assert k.modules["t10_pi"].path == "kernel/block/t10-pi.ko"
    assert (k.files / k.modules["t10_pi"].path).is_file()
    # Soft dependencies are shipped, not made hard: one failing to load must not stop sd_mod.
    assert k.modules["crc_t10dif"].depends == ()


def test_a_second_extraction_is_a_cache_lookup(tmp_path: Path) -> None:
    package = _kernel_deb(tmp_path)
    first = extract_kernel(package, tmp_path / "cache", ["virtio_net"])
    package.write_bytes(b"gone")  # reading the package again would fail
    again = extract_kernel(package, tmp_path / "cache", ["virtio_net"])
    assert again == first


def test_an_unknown_module_is_named(tmp_path: Path) -> None:
    with pytest.raises(RamdiskError, match="no module bnx9"):
        extract_kernel(_kernel_deb(tmp_path), tmp_path / "cache", ["virtio_net", "bnx9"])


MODULES = {
    "virtio_net": Module(
        "virtio_net", "kernel/drivers/net/virtio_net.ko", ("net_failover", "virtio"), ("virtio:d00000001v*",)
    ),
    "net_failover": Module("net_failover", "kernel/drivers/net/net_failover.ko", ("failover",), ()),
    "failover": Module("failover", "kernel/net/core/failover.ko", (), ()),
    "virtio": Module("virtio", "kernel/drivers/virtio/virtio.ko", (), ()),
}  # fmt: skip


def test_load_order_puts_every_module_after_its_dependencies() -> None:
    order = load_order(MODULES, "virtio_net")
    assert order[-1] == "virtio_net"
    assert order.index("failover") < order.index("net_failover")
    assert set(order) == set(MODULES)


def test_modules_dep_lists_the_closure_with_the_first_to_load_last() -> None:
    files = depmod(MODULES)
    lines = files["modules.dep"].decode().splitlines()
    line = next(x for x in lines if x.startswith("kernel/drivers/net/virtio_net.ko:"))
    deps = line.split(":", 1)[1].split()
    assert deps[-1] in ("kernel/net/core/failover.ko", "kernel/drivers/virtio/virtio.ko")
    assert deps.index("kernel/drivers/net/net_failover.ko") < deps.index("kernel/net/core/failover.ko")
    assert "kernel/net/core/failover.ko:" in lines
    assert files["modules.alias"] == b"alias virtio:d00000001v* virtio_net\n"
