"""`bootforge ramdisk build`: Debian packages in, the deploy ramdisk's kernel and initrd out.

The steps, each cached under the cache directory so a second build only redoes what changed:
fetch the .deb files (apt-get download), unpack them, take the kernel and the module closure out of
linux-image-*, find the standard library modules the agent imports, compile them, collect the shared
libraries every shipped program needs (ELF DT_NEEDED), lay the tree out usr-merged, check that the
shipped Python imports the agent with only the shipped files, and write two compressed cpio segments.
`arch` builds another architecture's ramdisk from its Debian packages without running any of its
binaries (bootforge/ramdisk/target.py says how).
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bootforge.ramdisk import python as py
from bootforge.ramdisk.debs import Apt, RamdiskError, fetch, host_arch, kernel_package, python_version, unpack
from bootforge.ramdisk.extras import add_extras
from bootforge.ramdisk.image import Image, compress, cpio
from bootforge.ramdisk.kmod import Kernel, depmod, extract_kernel
from bootforge.ramdisk.rootfs import RootFs, normalise
from bootforge.ramdisk.scripts import INIT, UDHCPC_SCRIPT
from bootforge.ramdisk.target import Target
from bootforge.ramdisk.target import target as find_target

__all__ = ["AGENT_DIR", "DEFAULT_CACHE", "BuildResult", "build", "packages"]

DEFAULT_CACHE = Path(os.environ.get("BOOTFORGE_RAMDISK_CACHE", "/var/cache/bootforge/ramdisk"))
# The lab's probe ramdisk fetches the same kernel package: reuse its download.
LAB_DEBS = Path(os.environ.get("BOOTFORGE_LAB_CACHE", "/var/cache/bootforge/lab")) / "debs"
AGENT_DIR = Path(__file__).resolve().parent.parent / "agent"
RECIPE = "2"
# Where --ca-bundle goes (bootforge/agent/cmdline.py CA_BUNDLE names the same path).
CA_BUNDLE = "etc/bootforge/ca.pem"

# Programs the agent runs (from the zstd, fdisk, util-linux and dropbear-bin packages), as packaged paths.
# dropbear serves the rescue login (agent/rescue.py): about 0.6 MB installed with its libraries, where
# openssh-server would bring 2 MB more and PAM, Kerberos and systemd libraries.
TOOLS = ("usr/bin/zstd", "sbin/sfdisk", "sbin/wipefs", "usr/sbin/dropbear")


def packages(pyver: str) -> list[str]:
    """Every package but the kernel; libraries are listed by hand and checked against DT_NEEDED."""
    return [
        "busybox-static", "libc6",
        f"python{pyver}-minimal", f"libpython{pyver}-minimal", f"libpython{pyver}-stdlib",
        # libssl3 for libcrypto: hashlib's sha256 through OpenSSL is about 5x Python's builtin one.
        "zlib1g", "libexpat1", "libffi8", "libbz2-1.0", "libssl3",
        "zstd", "liblzma5", "liblz4-1",
        "fdisk", "libfdisk1", "libsmartcols1", "libuuid1", "libblkid1", "libreadline8", "libtinfo6",
        "util-linux",
        "dropbear-bin", "libtomcrypt1", "libtommath1", "libgmp10", "libcrypt1",
    ]  # fmt: skip


@dataclass(frozen=True)
class BuildResult:
    kernel: Path
    initrd: Path
    kernel_size: int
    initrd_size: int
    unpacked_size: int  # bytes of file contents in the initrd
    kernel_version: str
    compression: str
    seconds: float
    debs: dict[str, str] = field(default_factory=dict)  # package -> .deb file name
    arch: str = "amd64"  # the Debian architecture it was built for

    @property
    def total_size(self) -> int:
        return self.kernel_size + self.initrd_size


@dataclass
class _Ctx:
    cache: Path
    pyver: str
    debs: dict[str, Path]
    rootfs: RootFs  # the target architecture's packages
    kernel: Kernel
    python: py.Interpreter  # runs on the build machine (the target's own, when it is the same)
    say: Callable[[str], None]
    target: Target
    # Another architecture's build: the build machine's own packages (its Python and busybox),
    # which run where the target's cannot. None when the target is the build machine's.
    helper: RootFs | None = None
    helper_target: Target | None = None
    # Programs of optional tool sets (`with_tools`), shipped with their libraries.
    extra_tools: tuple[str, ...] = ()

    @property
    def foreign(self) -> bool:
        return self.helper is not None

    def target_path(self, build_path: str) -> str:
        """A file name the build machine's Python reported, as the target's package names it
        (extension modules and _sysconfigdata carry the multiarch triplet)."""
        if self.helper_target is None:
            return build_path
        return build_path.replace(self.helper_target.triplet, self.target.triplet)


def build(
    output_dir: Path,
    cache: Path = DEFAULT_CACHE,
    *,
    kernel_name: str = "vmlinuz",
    initrd_name: str = "initrd",
    agent_dir: Path = AGENT_DIR,
    modules: Sequence[str] | None = None,
    compression: str = "zstd",
    refresh: bool = False,
    ca_bundle: Path | None = None,
    say: Callable[[str], None] = lambda _: None,
    with_tools: Sequence[str] = (),
    arch: str | None = None,
) -> BuildResult:
    """Build into ``output_dir/<kernel_name>`` and ``output_dir/<initrd_name>`` (see the module doc).

    The names may hold directories ("bootforge/vmlinuz"), as the netboot settings name the files.
    `ca_bundle`: PEM certificates the agent verifies an https API against (CA_BUNDLE in the initrd).
    `with_tools`: optional tool sets (bootforge/ramdisk/extras.py: "burn-in"), with their libraries.
    `arch`: the Debian architecture to build for (default: the build machine's); `modules`: the
    roots of the kernel module set (default: that architecture's list).
    """
    start = time.monotonic()
    try:
        tgt = find_target(arch or host_arch())
    except ValueError as e:
        raise RamdiskError(str(e)) from None
    ca = read_ca_bundle(ca_bundle) if ca_bundle is not None else None
    ctx = _prepare(cache, tgt, tgt.modules if modules is None else modules, refresh, say)
    if with_tools:
        if getattr(ctx, "foreign", False):
            raise RamdiskError("--with is only built for the build machine's own architecture")
        lab = [LAB_DEBS] if LAB_DEBS.is_dir() else []
        ctx.extra_tools = add_extras(
            ctx.rootfs, cache, with_tools, base_packages=ctx.debs, also=lab, refresh=refresh, say=say
        )
    image = Image()
    agent_paths = _layout(ctx, image, agent_dir, ca)
    if ctx.foreign:
        # The target's interpreter cannot run here: _stdlib and _libraries already refused a
        # closure module or library the target's packages lack.
        say(f"{tgt.debian}: the shipped files were checked statically (its Python does not run here)")
    else:
        say("checking the shipped Python imports the agent")
        _verify_python(ctx, image, agent_dir)
    say(f"writing the initrd ({image.size() / 2**20:.1f} MiB unpacked, {compression})")
    base = _segment(cpio(image, image.paths(lambda p: p not in agent_paths)), compression, cache)
    top = compress(cpio(image, image.paths(lambda p: p in agent_paths)), compression)
    kernel_out, initrd_out = output_dir / kernel_name, output_dir / initrd_name
    _publish(kernel_out, ctx.kernel.vmlinuz.read_bytes())
    _publish(initrd_out, base + top)
    return BuildResult(
        kernel=kernel_out,
        initrd=initrd_out,
        kernel_size=kernel_out.stat().st_size,
        initrd_size=initrd_out.stat().st_size,
        unpacked_size=image.size(),
        kernel_version=ctx.kernel.version,
        compression=compression,
        seconds=time.monotonic() - start,
        debs={p: d.name for p, d in sorted(ctx.debs.items())},
        arch=tgt.debian,
    )


def _prepare(
    cache: Path, tgt: Target, modules: Sequence[str], refresh: bool, say: Callable[[str], None]
) -> _Ctx:
    apt = Apt(tgt.debian, cache)
    pyver = python_version(apt)
    kpkg = kernel_package(apt)
    wanted = [kpkg, *packages(pyver)]
    lab = [LAB_DEBS] if LAB_DEBS.is_dir() else []
    say(f"fetching {len(wanted)} Debian {tgt.debian} packages into {cache / 'debs'}")
    debs = fetch(wanted, cache / "debs", lab, refresh, apt)
    say(f"taking the kernel and {len(modules)} drivers (with their dependencies) out of {debs[kpkg].name}")
    kernel = extract_kernel(debs[kpkg], cache, modules)
    say("unpacking the other packages")
    trees = [unpack(debs[p], cache / "trees") for p in wanted[1:]]
    rootfs = RootFs(trees, tgt.lib_dirs)
    if not apt.foreign:
        python = _interpreter(cache, pyver, rootfs, debs, trees, tgt)
        return _Ctx(cache, pyver, debs, rootfs, kernel, python, say, tgt)
    # The build machine's own Python and busybox of the same versions do what the target's would.
    own = find_target(host_arch())
    helpers = [
        f"python{pyver}-minimal",
        f"libpython{pyver}-minimal",
        f"libpython{pyver}-stdlib",
        "busybox-static",
    ]
    helper_packages = [*packages(pyver)]
    say(f"fetching the build machine's {own.debian} Python and busybox (they run here; the target's cannot)")
    hdebs = fetch(helper_packages, cache / "debs", lab, refresh, Apt(own.debian, cache))
    for name in helpers:
        if _source_version(hdebs[name]) != _source_version(debs[name]):
            raise RamdiskError(
                f"{name} differs between {own.debian} ({hdebs[name].name}) and {tgt.debian} "
                f"({debs[name].name}): the build needs the same version of both (try --refresh)"
            )
    htrees = [unpack(hdebs[p], cache / "trees") for p in helper_packages]
    helper = RootFs(htrees, own.lib_dirs)
    python = _interpreter(cache, pyver, helper, hdebs, htrees, own)
    return _Ctx(cache, pyver, debs, rootfs, kernel, python, say, tgt, helper, own)


def _source_version(deb: Path) -> str:
    """The version in a .deb's name without a binNMU suffix (+b1): the same source and recipe."""
    parts = deb.name.split("_")
    version = parts[1] if len(parts) >= 3 else deb.name
    return re.sub(r"\+b\d+$", "", version)


def _interpreter(
    cache: Path, pyver: str, rootfs: RootFs, debs: dict[str, Path], trees: Sequence[Path], tgt: Target
) -> py.Interpreter:
    """Debian's Python over its full standard library, in one tree (hard links into the unpacked ones)."""
    names = [f"python{pyver}-minimal", f"libpython{pyver}-minimal", f"libpython{pyver}-stdlib"]
    key = hashlib.sha256("\0".join(debs[n].name for n in names).encode()).hexdigest()[:16]
    merged = cache / f"python-{key}"
    if not merged.is_dir():
        tmp = cache / f".python-{key}.{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        for n in names:
            shutil.copytree(
                cache / "trees" / debs[n].name.removesuffix(".deb"), tmp, symlinks=True,
                dirs_exist_ok=True, copy_function=os.link,
            )  # fmt: skip
        tmp.rename(merged)
    libdirs = [t / d for t in trees for d in (f"lib/{tgt.triplet}", f"usr/lib/{tgt.triplet}")]
    loader = rootfs.index[rootfs.resolve(tgt.loader)]
    return py.Interpreter(loader, tuple(d for d in libdirs if d.is_dir()), merged / f"usr/bin/python{pyver}")


def read_ca_bundle(path: Path) -> bytes:
    """The PEM CA bundle at `path`, checked the way the agent will load it; RamdiskError if unusable."""
    import ssl

    try:
        data = path.read_bytes()
    except OSError as e:
        raise RamdiskError(f"cannot read the CA bundle {path}: {e.strerror}") from None
    if b"-----BEGIN CERTIFICATE-----" not in data or b"PRIVATE KEY-----" in data:
        raise RamdiskError(f"{path} is no CA bundle: it must hold PEM certificates and no private key")
    try:
        ssl.create_default_context(cadata=data.decode("ascii"))
    except (ssl.SSLError, UnicodeDecodeError, ValueError) as e:
        raise RamdiskError(f"the CA bundle {path} cannot be loaded: {e}") from None
    return data


def _layout(ctx: _Ctx, image: Image, agent_dir: Path, ca: bytes | None = None) -> set[str]:
    """Fill `image`; returns the paths of the small, often-changing segment (agent, scripts)."""
    for link, target in (
        ("bin", "usr/bin"),
        ("sbin", "usr/sbin"),
        ("lib", "usr/lib"),
        ("lib64", "usr/lib64"),
    ):
        image.symlink(link, target)
    for d in ("dev", "proc", "sys", "run", "etc", "usr/bin", "usr/sbin"):
        image.dir(d)
    image.dir("tmp", 0o1777)
    image.dir("root", 0o700)
    # The kernel opens /dev/console for init before anything is mounted: it must be in the archive.
    image.chardev("dev/console", 5, 1)
    _busybox(ctx, image)
    elves = _tools(ctx, image)
    elves += _stdlib(ctx, image, agent_dir)
    _libraries(ctx, image, elves)
    _modules(ctx.kernel, image)
    before = set(image.entries)
    _agent(ctx, image, agent_dir)
    image.file("init", INIT.encode(), 0o755)
    image.file("etc/udhcpc.script", UDHCPC_SCRIPT.encode(), 0o755)
    image.file("etc/hosts", b"127.0.0.1 localhost\n")
    image.file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n")
    image.file("etc/group", b"root:x:0:\n")
    image.file("etc/resolv.conf", b"")
    if ca is not None:
        image.dir(posixpath.dirname(CA_BUNDLE))
        image.file(CA_BUNDLE, ca)
    manifest = {
        "arch": ctx.target.debian,
        "kernel": ctx.kernel.version,
        "debs": sorted(d.name for d in ctx.debs.values()),
    }
    image.file("etc/bootforge-ramdisk.json", json.dumps(manifest, indent=1).encode() + b"\n")
    return set(image.entries) - before


def _busybox(ctx: _Ctx, image: Image) -> None:
    real = ctx.rootfs.index[ctx.rootfs.resolve("bin/busybox")]
    image.file("usr/bin/busybox", real.read_bytes(), 0o755)
    if ctx.helper is not None:
        # The build machine's busybox-static of the same source version lists the same applets.
        real = ctx.helper.index[ctx.helper.resolve("bin/busybox")]
    try:
        applets = subprocess.run(
            [str(real), "--list-full"], capture_output=True, text=True, check=True, timeout=60
        ).stdout.split()
    except (OSError, subprocess.SubprocessError) as e:
        raise RamdiskError(f"cannot list busybox's applets ({real} --list-full): {e}") from None
    for applet in applets:
        path = "usr/" + applet if not applet.startswith("usr/") else applet
        if applet != "linuxrc" and path not in image.entries:
            image.symlink(path, _relative("usr/bin/busybox", path))


def _relative(target: str, link: str) -> str:
    # Relative links resolve the same in the initrd and in a copy of it on the build machine.
    return posixpath.relpath(target, posixpath.dirname(link))


def _tools(ctx: _Ctx, image: Image) -> list[tuple[str, bytes]]:
    out = []
    for path in (*TOOLS, *ctx.extra_tools, f"usr/bin/python{ctx.pyver}"):
        data, target = ctx.rootfs.read(path), normalise(path)
        image.file(target, data, 0o755)  # replaces a busybox applet of the same name
        out.append((target, data))
    image.symlink("usr/bin/python3", f"python{ctx.pyver}")
    return out


def _libraries(ctx: _Ctx, image: Image, elves: list[tuple[str, bytes]]) -> None:
    """Ship every needed library once; other names of the same file become symlinks to it."""
    first: dict[str, str] = {}
    for path, source in sorted(ctx.rootfs.library_closure(elves).items()):
        if source in first:
            image.symlink(path, _relative(first[source], path))
        else:
            first[source] = path
            image.file(path, ctx.rootfs.read(source), 0o755)


def _modules(kernel: Kernel, image: Image) -> None:
    base = f"usr/lib/modules/{kernel.version}"
    for m in kernel.modules.values():
        image.file(f"{base}/{m.path}", (kernel.files / m.path).read_bytes())
    for name, data in depmod(kernel.modules).items():
        image.file(f"{base}/{name}", data)


def _stdlib(ctx: _Ctx, image: Image, agent_dir: Path) -> list[tuple[str, bytes]]:
    """The standard library modules the agent needs: .pyc files, and extension modules (returned)."""
    stdlib_rel = f"usr/lib/python{ctx.pyver}"
    stdlib = ctx.python.executable.parent.parent / f"lib/python{ctx.pyver}"
    required, maybe = py.agent_imports(agent_dir)
    with tempfile.TemporaryDirectory(prefix="bootforge-agent-") as tmp:
        shutil.copytree(agent_dir, Path(tmp) / py.AGENT_PACKAGE, ignore=shutil.ignore_patterns("__pycache__"))
        found = py.stdlib_closure(ctx.python, stdlib, Path(tmp), required, maybe)
    # Sources and extension modules are the target's own files (the same names but for the
    # multiarch triplet); the build machine's interpreter only found them and compiles them.
    files = [ctx.target_path(rel) for rel in found]
    sources = {
        rel: ctx.rootfs.index[ctx.rootfs.resolve(f"{stdlib_rel}/{rel}")]
        for rel in files
        if rel.endswith(".py")
    }
    key = [RECIPE, *(d.name for p, d in sorted(ctx.debs.items()) if "python" in p)]
    pyc = py.cached_compile(ctx.python, sources, ctx.cache, key, "/" + stdlib_rel)
    for rel in sorted(sources):
        image.file(f"{stdlib_rel}/{rel}c", (pyc / f"{rel}c").read_bytes())
    extensions = []
    for rel in files:
        if rel.endswith(".so"):
            data = ctx.rootfs.read(f"{stdlib_rel}/{rel}")
            image.file(f"{stdlib_rel}/{rel}", data, 0o755)
            extensions.append((f"{stdlib_rel}/{rel}", data))
    # getpath's landmark for exec_prefix: without lib-dynload the interpreter warns at every start.
    image.dir(f"{stdlib_rel}/lib-dynload")
    return extensions


def _agent(ctx: _Ctx, image: Image, agent_dir: Path) -> None:
    target = f"usr/lib/python{ctx.pyver}/{py.AGENT_PACKAGE}"
    sources = {str(p.relative_to(agent_dir)): p for p in sorted(agent_dir.rglob("*.py"))}
    if "__main__.py" not in sources:
        ctx.say(f"warning: {agent_dir} has no __main__.py: `python3 -m {py.AGENT_PACKAGE}` will fail")
    with tempfile.TemporaryDirectory(prefix="bootforge-pyc-") as tmp:
        py.compile_tree(ctx.python, sources, Path(tmp), "/" + target)
        for rel in sorted(sources):
            image.file(f"{target}/{rel}c", (Path(tmp) / f"{rel}c").read_bytes())


_VERIFY_SCRIPT = r"""
import importlib, json, pkgutil, sys
expect = json.loads(sys.argv[1])
assert sys.prefix == expect["prefix"], (sys.prefix, expect["prefix"])
pkg = importlib.import_module(expect["package"])
names = [i.name for i in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + ".")]
for name in expect["modules"] + [n for n in names if not n.endswith(".__main__")]:
    importlib.import_module(name)
outside = sorted({m.__file__ for m in list(sys.modules.values())
                  if getattr(m, "__file__", None) and not m.__file__.startswith(expect["prefix"])})
print(json.dumps({"outside": outside}))
"""


def _verify_python(ctx: _Ctx, image: Image, agent_dir: Path) -> None:
    """Run the shipped interpreter over the shipped files only: every agent module must import."""
    required, _ = py.agent_imports(agent_dir)
    with tempfile.TemporaryDirectory(prefix="bootforge-ramdisk-") as tmp:
        root = Path(tmp)
        image.write_to(
            root, lambda p: not p.startswith("usr/lib/modules/") and image.entries[p].kind != "chardev"
        )
        shipped = py.Interpreter(
            root / ctx.target.loader,
            tuple(root / d for d in ctx.target.lib_dirs),
            root / f"usr/bin/python{ctx.pyver}",
        )
        expect = {"prefix": str(root / "usr"), "package": py.AGENT_PACKAGE, "modules": required}
        result = json.loads(shipped.run(["-c", _VERIFY_SCRIPT, json.dumps(expect)]))
    if result["outside"]:
        raise RamdiskError(f"the shipped Python loaded files from outside the ramdisk: {result['outside']}")


def _segment(data: bytes, compression: str, cache: Path, keep: int = 3) -> bytes:
    """`compress`, cached by content: the big segment only changes with the packages.

    Only the `keep` most recently used segments stay in the cache (each is ~12 MiB).
    """
    path = cache / f"segment-{hashlib.sha256(data).hexdigest()[:24]}.{compression}"
    if path.is_file():
        path.touch()
        return path.read_bytes()
    out = compress(data, compression)
    _publish(path, out)
    old = sorted(cache.glob("segment-*"), key=lambda p: p.stat().st_mtime, reverse=True)[keep:]
    for stale in old:
        stale.unlink(missing_ok=True)
    return out


def _publish(path: Path, data: bytes) -> None:
    """Write atomically: a netboot server reading the old file never sees a half-written one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_bytes(data)
    tmp.chmod(0o644)
    os.replace(tmp, path)
