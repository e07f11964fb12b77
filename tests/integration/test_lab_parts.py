"""The lab's parts without VMs: the files it writes are read back by the programs that consume them."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import struct
import subprocess
import time
import tomllib
from pathlib import Path

import pytest

from bootforge.config import Settings
from bootforge.drivers import qemu_machine as vm
from bootforge.lab import lab, procs, ramdisk


def test_initramfs_unpacks_with_busybox_cpio(tmp_path: Path) -> None:
    busybox = shutil.which("busybox")
    if busybox is None:
        pytest.skip("needs busybox (Debian package busybox)")
    image = ramdisk.initramfs(b"\x7fELF fake busybox", {m: f"module {m}".encode() for m in ramdisk.MODULES})
    archive = tmp_path / "initrd.cpio"
    archive.write_bytes(gzip.decompress(image))
    listing = subprocess.run(
        [busybox, "cpio", "-tv", "-F", str(archive)], capture_output=True, text=True, check=True
    ).stdout
    names = {line.split()[-1] for line in listing.splitlines()}
    assert {"init", "bin/busybox", "dev/console", "etc/udhcpc.script", "lib/modules/virtio_net.ko"} <= names
    console = next(line for line in listing.splitlines() if line.endswith("dev/console"))
    assert console.startswith("crw")  # a character device, not a file
    raw = archive.read_bytes()
    header = raw[raw.index(b"dev/console\0") - 110 :][:110]
    assert (int(header[78:86], 16), int(header[86:94], 16)) == (5, 1)  # newc rdevmajor, rdevminor
    out = tmp_path / "x"
    out.mkdir()
    subprocess.run([busybox, "cpio", "-id", "-F", str(archive)], cwd=out, check=True, capture_output=True)
    init = (out / "init").read_text()
    assert os.access(out / "init", os.X_OK)
    assert ramdisk.API_MARKER in init and ramdisk.FAIL_MARKER in init and "@API@" not in init
    assert (out / "etc/modules.order").read_text().split() == list(ramdisk.MODULES)


def test_serve_config_is_valid_bootforge_settings(tmp_path: Path) -> None:
    for dhcp in ("full", "proxy"):
        state = lab.LabState(str(tmp_path), "bflab-1-1-", dhcp)
        (tmp_path / "serve").mkdir(exist_ok=True)
        (tmp_path / "serve" / "htpasswd").write_text("")
        data = tomllib.loads(lab.serve_config(state, tmp_path / "boot"))
        settings = Settings.model_validate(data)
        assert settings.netboot.dhcp == dhcp
        assert settings.netboot.dhcp_interfaces == ["br0"]
        assert settings.public_url == f"http://{lab.ADDRESS}:{lab.API_PORT}"  # what the ramdisk calls
        assert settings.auth_strategy == "http_basic"  # the API is off loopback, inside the lab


@pytest.mark.parametrize("firmware", lab.FIRMWARES)
def test_vm_definitions_load_and_build(tmp_path: Path, firmware: str) -> None:
    rec = lab.VmRecord("vm1", firmware, "52:54:00:77:00:01", "tap0", str(tmp_path))
    rec.definition.write_text(json.dumps(lab.vm_definition(rec, 512, "bflab-1-1-net")))
    defn = vm.load_definition(rec.definition)
    fw = vm.Firmware(Path("/ovmf/code.fd"), Path("/ovmf/vars.fd")) if firmware != "bios" else vm.Firmware()
    argv = vm.build_argv(defn, "tcg", fw)
    assert argv[:4] == ["ip", "netns", "exec", "bflab-1-1-net"]
    device = argv[argv.index("-device", argv.index("-netdev")) + 1]
    assert ("romfile=" in device) == (firmware != "bios")  # OVMF's own PXE/HTTP boot, not the iPXE ROM
    assert ("name=opt/org.tianocore/IPv4PXESupport,string=no" in argv) == (firmware == "uefi-http")


def test_firmware_plan() -> None:
    assert lab.firmware_plan(4, "mixed") == ["bios", "uefi", "uefi-http", "bios"]
    assert lab.firmware_plan(2, "uefi") == ["uefi", "uefi"]
    with pytest.raises(lab.LabError, match="unknown firmware"):
        lab.firmware_plan(1, "coreboot")


def test_end_process_spares_a_process_that_is_not_the_labs(tmp_path: Path) -> None:
    sleeper = subprocess.Popen(["sleep", "30"])
    # Popen may return (vfork) while the child is still inside exec, when its command line reads
    # empty for an instant; the lab only ever signals processes long after they started.
    for _ in range(100):
        if b"sleep" in (procs.cmdline(sleeper.pid) or b""):
            break
        time.sleep(0.01)
    try:
        assert not procs.end_process(sleeper.pid, str(tmp_path))  # its command line lacks the marker
        assert sleeper.poll() is None
        assert procs.end_process(sleeper.pid, "sleep")
        assert sleeper.wait(5) is not None
    finally:
        if sleeper.poll() is None:
            sleeper.kill()
            sleeper.wait()


def test_router_advertisement_says_no_router_and_no_dhcpv6() -> None:
    from bootforge.lab.ra import advertisement

    mac = bytes.fromhex("020000000001")
    packet = advertisement(mac)
    kind, code, _checksum, hops, flags, lifetime = struct.unpack_from("!BBHBBH", packet)
    assert (kind, code, hops) == (134, 0, 64)
    assert flags == 0  # M and O off: iPXE and hosts do not look for DHCPv6
    assert lifetime == 0  # not a default router: nothing leaves the lab this way
    assert packet[16:] == bytes([1, 1]) + mac  # source link-layer address option, and nothing else
