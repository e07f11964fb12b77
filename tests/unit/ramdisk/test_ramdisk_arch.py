"""Building another architecture's ramdisk (#12, `bootforge ramdisk build --arch arm64`): one package
cache holds both architectures without mixing them, a foreign architecture gets an apt state of its
own (never the host's dpkg), and the build machine's helpers must be the same source versions."""

from __future__ import annotations

from pathlib import Path

import pytest
from ramdisk_fakes import deb

from bootforge.netboot.boot.arch import cpu_arch, ramdisk_file
from bootforge.ramdisk import builder, debs
from bootforge.ramdisk.debs import Apt, RamdiskError, fetch
from bootforge.ramdisk.rootfs import RootFs
from bootforge.ramdisk.target import TARGETS, target


def test_one_cache_holds_both_architectures_apart(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "debs"
    cache.mkdir()
    amd = deb(cache / "zstd_1.5_amd64.deb", {"usr/bin/zstd": b"x86"})
    arm = deb(cache / "zstd_1.5_arm64.deb", {"usr/bin/zstd": b"arm"})
    noarch = deb(cache / "tzdata_2024_all.deb", {"usr/share/zoneinfo/UTC": b"u"})
    monkeypatch.setenv("PATH", str(tmp_path / "no-apt-here"))  # nothing may be downloaded
    monkeypatch.setattr(debs, "_HOST_ARCH", ["amd64"])
    assert fetch(["zstd", "tzdata"], cache) == {"zstd": amd, "tzdata": noarch}
    arm64 = Apt("arm64", tmp_path)
    assert fetch(["zstd", "tzdata"], cache, apt=arm64) == {"zstd": arm, "tzdata": noarch}


def test_a_missing_arm64_package_is_not_taken_from_the_amd64_build(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "debs"
    cache.mkdir()
    deb(cache / "zstd_1.5_amd64.deb", {"usr/bin/zstd": b"x86"})
    (tmp_path / "apt-arm64" / "lists").mkdir(parents=True)
    (
        tmp_path / "apt-arm64" / "lists" / "deb.debian.org_debian_dists_bookworm_main_binary-arm64_Packages"
    ).touch()
    monkeypatch.setenv("PATH", str(tmp_path / "no-apt-here"))
    monkeypatch.setattr(debs, "_HOST_ARCH", ["amd64"])
    with pytest.raises(RamdiskError, match="apt"):
        fetch(["zstd"], cache, apt=Apt("arm64", tmp_path))


def test_a_foreign_architecture_has_an_apt_state_of_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(debs, "_HOST_ARCH", ["amd64"])
    assert Apt("amd64", tmp_path).options() == []  # the host's apt as it is
    opts = Apt("arm64", tmp_path).options()
    pairs = dict(o.split("=", 1) for o in opts if o != "-o")
    assert pairs["APT::Architecture"] == "arm64" and pairs["APT::Architectures::"] == "arm64"
    # Lists, dpkg status and archives under the cache: the host's dpkg never learns of arm64.
    for key in ("Dir::State::Lists", "Dir::State::status", "Dir::Cache"):
        assert pairs[key].startswith(str(tmp_path / "apt-arm64")), key
    with pytest.raises(RamdiskError, match="architecture"):
        Apt("arm64; rm -rf /", tmp_path)
    with pytest.raises(RamdiskError, match="own apt state"):
        Apt("arm64")


def test_helpers_must_come_from_the_same_source_version() -> None:
    same = builder._source_version(Path("busybox-static_1%3a1.35.0-4+deb12u1+b1_arm64.deb"))
    assert same == builder._source_version(Path("busybox-static_1%3a1.35.0-4+deb12u1_amd64.deb"))
    assert builder._source_version(Path("python3.11-minimal_3.11.2-6+deb12u9_arm64.deb")) != (
        builder._source_version(Path("python3.11-minimal_3.11.2-6+deb12u8_amd64.deb"))
    )


def test_arm64_target_names_its_own_loader_libraries_and_drivers() -> None:
    arm = target("arm64")
    assert arm.loader == "usr/lib/ld-linux-aarch64.so.1"
    assert arm.lib_dirs == ("usr/lib/aarch64-linux-gnu", "usr/lib")
    assert "virtio_net" in arm.modules and "vmw_pvscsi" not in arm.modules and "nicvf" in arm.modules
    assert set(TARGETS) == {"amd64", "arm64"}
    with pytest.raises(ValueError, match="amd64, arm64"):
        target("s390x")


def test_extension_modules_found_on_the_build_machine_map_to_the_targets(tmp_path: Path) -> None:
    ctx = builder._Ctx(
        tmp_path, "3.11", {}, RootFs([]), None, None, print,  # type: ignore[arg-type]
        target("arm64"), RootFs([]), target("amd64"),
    )  # fmt: skip
    assert ctx.foreign
    assert ctx.target_path("lib-dynload/_ssl.cpython-311-x86_64-linux-gnu.so") == (
        "lib-dynload/_ssl.cpython-311-aarch64-linux-gnu.so"
    )
    assert ctx.target_path("_sysconfigdata__linux_x86_64-linux-gnu.py") == (
        "_sysconfigdata__linux_aarch64-linux-gnu.py"
    )
    assert ctx.target_path("json/decoder.py") == "json/decoder.py"


def test_per_architecture_ramdisk_files() -> None:
    assert ramdisk_file("bootforge/vmlinuz", "aarch64") == "bootforge/arm64/vmlinuz"
    assert ramdisk_file("bootforge/initrd", "arm64") == "bootforge/arm64/initrd"
    assert ramdisk_file("vmlinuz", "aarch64") == "arm64/vmlinuz"
    # x86_64, unknown and unset architectures keep the files as written; URLs are the operator's.
    for cpu in ("x86_64", "amd64", None, "ppc64le"):
        assert ramdisk_file("bootforge/vmlinuz", cpu) == "bootforge/vmlinuz"
    assert ramdisk_file("http://mirror/k", "aarch64") == "http://mirror/k"
    found = cpu_arch("ARM64")
    assert found is not None and found.cpu == "aarch64" and found.serial_console == "ttyAMA0,115200"
