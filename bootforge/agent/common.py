"""What every agent command shares: its error type, the context it runs in and how it reports progress.

The agent runs inside the deploy ramdisk with the Python standard library only, and is copied there as
the top-level package `bootforge_agent`: modules here import each other relatively and import nothing
outside the standard library.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path


class CommandError(Exception):
    """A command failed; str(exc) is the one sentence reported to the conductor (and so to the operator)."""


@dataclass
class Context:
    """Where the agent looks at the machine. Defaults are the real machine; tests point them elsewhere."""

    # /sys and /proc are read under this root (a fake tree in tests).
    sys_root: Path = Path("/")
    # Device nodes live here (/dev/vda ...).
    dev_dir: Path = Path("/dev")
    # Explicit disks (regular files in tests and benchmarks); None: discover the machine's disks.
    disks: list[Path] | None = None
    # Kernel arguments, parsed (bootforge.api, bootforge.node, BOOTIF, ...).
    cmdline: dict[str, str] = field(default_factory=dict)


# progress(done, total, message): called by long commands as they go; cheap, may be called often.
Progress = Callable[[int, int, str], None]
