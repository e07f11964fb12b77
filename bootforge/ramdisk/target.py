"""The architectures the deploy ramdisk is built for, and what differs between them.

The build machine's own architecture is built as before: its packaged Python compiles the agent and
checks that it imports. Another architecture (arm64 built on amd64) runs none of its own binaries:
the build machine's packaged Python of the same version finds the standard-library closure and
compiles the .pyc files (bytecode is the same on every CPU for one Python version), which are then
taken from the target's packages; the extension modules, libraries and programs are the target's
own files; busybox's applet list is read from the build machine's busybox-static of the same
source version (the same configuration). What cannot be checked without running the target's
interpreter (every agent module imports with the shipped files alone) is checked statically instead:
every module of the closure and every library the programs need is shipped.
"""

from __future__ import annotations

from dataclasses import dataclass

from bootforge.ramdisk.kmod import DEFAULT_MODULES

__all__ = ["TARGETS", "Target", "target"]


@dataclass(frozen=True)
class Target:
    debian: str  # Debian architecture: amd64, arm64
    triplet: str  # multiarch triplet: x86_64-linux-gnu
    loader: str  # the dynamic loader, usr-merged, as the ramdisk's programs name it (PT_INTERP)
    modules: tuple[str, ...]  # roots of the kernel module set

    @property
    def lib_dirs(self) -> tuple[str, ...]:
        """Where the dynamic loader looks without an ld.so.cache (Debian's multiarch defaults)."""
        return (f"usr/lib/{self.triplet}", "usr/lib")


# vmw_pvscsi is x86 only; the NICs of common arm64 servers are added (Cavium/Marvell ThunderX,
# Huawei HNS3; Ampere machines use the PCIe NICs already listed).
_ARM64_MODULES = (*(m for m in DEFAULT_MODULES if m != "vmw_pvscsi"), "nicvf", "hns3")

TARGETS: dict[str, Target] = {
    t.debian: t
    for t in (
        Target("amd64", "x86_64-linux-gnu", "usr/lib64/ld-linux-x86-64.so.2", DEFAULT_MODULES),
        Target("arm64", "aarch64-linux-gnu", "usr/lib/ld-linux-aarch64.so.1", _ARM64_MODULES),
    )
}


def target(debian_arch: str) -> Target:
    """The Target for a Debian architecture name; ValueError naming the ones there are."""
    found = TARGETS.get(debian_arch)
    if found is None:
        raise ValueError(f"no ramdisk recipe for {debian_arch!r}: use one of {', '.join(TARGETS)}")
    return found
