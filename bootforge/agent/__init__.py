"""bootforge's deploy agent: runs inside the deploy ramdisk and carries out the conductor's commands.

Standard library only, relative imports only: the ramdisk ships this package as `bootforge_agent`.
Importing the package must stay cheap, because it happens before the first call to the conductor.
"""

__version__ = "0.1.0"


def log(message: str) -> None:
    """One state change on the serial console (stdout), flushed so the operator sees it at once."""
    print(f"bootforge-agent: {message}", flush=True)
