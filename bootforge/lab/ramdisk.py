"""The lab's probe ramdisk: Debian's kernel plus a busybox initramfs that proves the boot chain.

This is NOT the deploy agent. It stands in for it in the lab until the agent ramdisk exists: it
brings up the NIC the kernel command line names (``BOOTIF=<mac>``) with udhcpc, makes one HTTP call
to the API (``GET <bootforge.api>/v1``, which is public) and prints a marker line on the serial
console saying whether the call succeeded. Then it idles until it is powered off.

Inputs come from Debian's archive with the ordinary client (``apt-get download``), never from the
host's /boot: the kernel of ``linux-image-amd64`` and ``busybox-static``. Only the kernel, the few
modules the NIC needs (virtio PCI transport + virtio_net, lab pitfall 5) and busybox are taken out
of the packages. The initramfs is written here as a newc cpio (no cpio binary needed), gzipped.
Outputs are cached in a directory keyed by the package file names and this module's recipe, so a
second build is a lookup.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import re
import shutil
import stat
import subprocess
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

__all__ = ["API_MARKER", "DEFAULT_CACHE", "FAIL_MARKER", "Ramdisk", "RamdiskError", "build"]

DEFAULT_CACHE = Path(os.environ.get("BOOTFORGE_LAB_CACHE", "/var/cache/bootforge/lab"))
API_MARKER = "BOOTFORGE-LAB-RAMDISK: API reached"
FAIL_MARKER = "BOOTFORGE-LAB-RAMDISK: API NOT reached"
RECIPE_VERSION = "1"

# Load order matters: insmod does not resolve dependencies (lab recipe 2b).
MODULES = (
    "virtio_ring",
    "virtio",
    "virtio_pci_modern_dev",
    "virtio_pci_legacy_dev",
    "virtio_pci",
    "failover",
    "net_failover",
    "virtio_net",
)

INIT = r"""#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in $(cat /etc/modules.order); do insmod /lib/modules/$m.ko 2>/dev/null; done
arg() { tr ' ' '\n' < /proc/cmdline | sed -n "s/^$1=//p" | head -n 1; }
api=$(arg bootforge.api); node=$(arg bootforge.node); mac=$(arg BOOTIF)
echo "bootforge-lab-ramdisk: node=$node mac=$mac api=$api"
ip link set lo up
ifc=""; n=0
while [ -z "$ifc" ] && [ $n -lt 60 ]; do
  for d in /sys/class/net/*; do
    [ "$(cat $d/address 2>/dev/null)" = "$mac" ] && ifc=${d##*/}
  done
  [ -z "$ifc" ] && sleep 0.5; n=$((n + 1))
done
echo "bootforge-lab-ramdisk: interface ${ifc:-none}"
ip link set "$ifc" up
case "$api" in
  *://\[*)
    # The API is on IPv6: the kernel takes its address from the lab's router advertisements
    # (SLAAC); wait for a global one that is no longer tentative.
    n=0
    until ip -6 addr show dev "$ifc" | grep "scope global" | grep -qv tentative || [ $n -ge 60 ]; do
      sleep 0.5; n=$((n + 1))
    done
    ip -6 addr show dev "$ifc" | sed -n 's/.*inet6 \([^/ ]*\).*scope global.*/\1/p' | head -n 1 > /tmp/ip
    echo "bootforge-lab-ramdisk: ipv6 $(cat /tmp/ip) on $ifc" ;;
  *) udhcpc -i "$ifc" -s /etc/udhcpc.script -n -q -t 20 -T 2 -V bootforge-lab-ramdisk ;;
esac
ok=""
for try in 1 2 3 4 5; do
  # busybox-static 1.35's wget segfaults with -T; timeout(1) bounds the call instead.
  if timeout 20 wget -q -O /tmp/reply "$api/v1" 2>/tmp/wget.err; then ok=1; break; fi
  echo "bootforge-lab-ramdisk: GET $api/v1 failed: $(cat /tmp/wget.err)"
  sleep 2
done
[ -z "$ok" ] && ip addr && ip route
if [ -n "$ok" ]; then
  echo "@API@ node=$node ip=$(cat /tmp/ip 2>/dev/null) bytes=$(wc -c < /tmp/reply)"
else
  echo "@FAIL@ node=$node ip=$(cat /tmp/ip 2>/dev/null)"
fi
while true; do sleep 3600; done
"""

UDHCPC_SCRIPT = r"""#!/bin/sh
case "$1" in
  deconfig) ip addr flush dev "$interface"; ip link set "$interface" up ;;
  bound|renew)
    ip addr flush dev "$interface"
    ip addr add "$ip/${mask:-24}" dev "$interface"
    [ -n "$router" ] && ip route add default via "${router%% *}" dev "$interface"
    echo "$ip" > /tmp/ip
    echo "bootforge-lab-ramdisk: dhcp $ip on $interface" ;;
esac
exit 0
"""


class RamdiskError(RuntimeError):
    """A package could not be fetched or unpacked; the message says which and why."""


@dataclass(frozen=True)
class Ramdisk:
    kernel: Path
    initrd: Path


def _run(argv: list[str], cwd: Path | None = None) -> str:
    try:
        proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=600, check=False)
    except FileNotFoundError:
        raise RamdiskError(f"needs {argv[0]} (Debian's apt and dpkg)") from None
    if proc.returncode != 0:
        raise RamdiskError(f"{' '.join(argv)} failed: {proc.stderr.strip()[-500:]}")
    return proc.stdout


def kernel_package() -> str:
    """linux-image-amd64 is a metapackage; the real image is its linux-image-<abi>-amd64 dependency."""
    out = _run(["apt-cache", "depends", "linux-image-amd64"])
    m = re.search(r"Depends:\s*(linux-image-\S+-amd64)", out)
    if m is None:
        raise RamdiskError("apt-cache depends linux-image-amd64 names no linux-image-*-amd64 package")
    return m.group(1)


def download(package: str, debs: Path) -> Path:
    """`apt-get download` into `debs` unless a .deb of that package is already there."""
    debs.mkdir(parents=True, exist_ok=True)
    found = sorted(debs.glob(f"{package}_*.deb"))
    if not found:
        try:
            _run(["apt-get", "download", "-q", package], cwd=debs)
        except RamdiskError:
            # Stale package lists name a version the archive no longer has: refresh once, retry.
            _run(["apt-get", "update", "-qq"], cwd=debs)
            _run(["apt-get", "download", "-q", package], cwd=debs)
        found = sorted(debs.glob(f"{package}_*.deb"))
    if not found:
        raise RamdiskError(f"apt-get download {package} left no .deb in {debs}")
    return found[-1]


def _members(deb: Path) -> Iterable[tuple[tarfile.TarInfo, bytes | None]]:
    """Stream the package's file tree (dpkg-deb handles whichever compression it uses)."""
    proc = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    try:
        with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
            for info in tar:
                f = tar.extractfile(info) if info.isfile() else None
                yield info, f.read() if f else None
    finally:
        proc.stdout.close()
        if proc.wait() != 0:
            raise RamdiskError(f"dpkg-deb --fsys-tarfile {deb} failed")


def _extract_kernel(deb: Path) -> tuple[bytes, dict[str, bytes]]:
    kernel: bytes | None = None
    modules: dict[str, bytes] = {}
    wanted = {f"{m}.ko" for m in MODULES}
    for info, data in _members(deb):
        name = os.path.basename(info.name)
        if data is None:
            continue
        if re.fullmatch(r"\./boot/vmlinuz-.*|boot/vmlinuz-.*", info.name):
            kernel = data
        elif name in wanted and "/lib/modules/" in "/" + info.name.lstrip("./"):
            modules[name[: -len(".ko")]] = data
    missing = [m for m in MODULES if m not in modules]
    if kernel is None or missing:
        raise RamdiskError(f"{deb.name} lacks {'the kernel' if kernel is None else ', '.join(missing)}")
    return kernel, modules


def _extract_busybox(deb: Path) -> bytes:
    for info, data in _members(deb):
        if data is not None and info.name.lstrip("./") == "bin/busybox":
            return data
    raise RamdiskError(f"{deb.name} has no bin/busybox")


class _Cpio:
    """A newc ("070701") archive, the format the kernel unpacks as an initramfs."""

    def __init__(self) -> None:
        self.buf = io.BytesIO()
        self.ino = 1

    def _entry(self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)) -> None:
        encoded = name.encode() + b"\0"
        fields = [self.ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(encoded), 0]
        self.ino += 1
        self.buf.write(b"070701" + b"".join(b"%08X" % v for v in fields) + encoded)
        self.buf.write(b"\0" * (-(110 + len(encoded)) % 4))
        self.buf.write(data + b"\0" * (-len(data) % 4))

    def dir(self, name: str) -> None:
        self._entry(name, stat.S_IFDIR | 0o755)

    def file(self, name: str, data: bytes, perm: int = 0o644) -> None:
        self._entry(name, stat.S_IFREG | perm, data)

    def chardev(self, name: str, major: int, minor: int) -> None:
        self._entry(name, stat.S_IFCHR | 0o600, rdev=(major, minor))

    def finish(self) -> bytes:
        self._entry("TRAILER!!!", 0)
        return self.buf.getvalue()


def initramfs(busybox: bytes, modules: dict[str, bytes]) -> bytes:
    c = _Cpio()
    for d in ("bin", "dev", "etc", "lib", "lib/modules", "proc", "sys", "tmp"):
        c.dir(d)
    # Without /dev/console in the archive the kernel has no console for init's output.
    c.chardev("dev/console", 5, 1)
    c.file("bin/busybox", busybox, 0o755)
    init = INIT.replace("@API@", API_MARKER).replace("@FAIL@", FAIL_MARKER)
    c.file("init", init.encode(), 0o755)
    c.file("etc/udhcpc.script", UDHCPC_SCRIPT.encode(), 0o755)
    c.file("etc/modules.order", "\n".join(MODULES).encode() + b"\n")
    for name in MODULES:
        c.file(f"lib/modules/{name}.ko", modules[name])
    return gzip.compress(c.finish(), compresslevel=6, mtime=0)


def build(cache: Path = DEFAULT_CACHE) -> Ramdisk:
    """The kernel and probe initrd, built once per (packages, recipe) and reused from `cache`."""
    debs = cache / "debs"
    kdeb = download(kernel_package(), debs)
    bdeb = download("busybox-static", debs)
    key = hashlib.sha256(
        "\0".join([kdeb.name, bdeb.name, RECIPE_VERSION, INIT, UDHCPC_SCRIPT, *MODULES]).encode()
    ).hexdigest()[:16]
    out = cache / f"ramdisk-{key}"
    result = Ramdisk(out / "vmlinuz", out / "initrd")
    if result.kernel.is_file() and result.initrd.is_file():
        return result
    kernel, modules = _extract_kernel(kdeb)
    image = initramfs(_extract_busybox(bdeb), modules)
    tmp = cache / f".ramdisk-{key}.{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    (tmp / "vmlinuz").write_bytes(kernel)
    (tmp / "initrd").write_bytes(image)
    try:
        tmp.rename(out)  # atomic: a concurrent builder either wins or finds the finished result
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
    return result
