"""The deploy ramdisk: Debian's kernel and packages, the agent, and an init that starts it.

`build` writes the kernel and initrd the netboot server hands to machines that run the agent.
"""

from bootforge.ramdisk.builder import DEFAULT_CACHE, BuildResult, build
from bootforge.ramdisk.debs import RamdiskError

__all__ = ["DEFAULT_CACHE", "BuildResult", "RamdiskError", "build"]
