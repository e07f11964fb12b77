"""Sans-IO TFTP server core: RFC 1350 reads with options (RFC 2347/2348/2349) and windows (RFC 7440).

No sockets and no clock: a `TftpTransfer` takes datagrams and `now`, and returns the datagrams to
send plus a `deadline` for the shell's timer; it ends with a `Completed` or `Failed` result. Files
come from an injected `FileSource`; `FileSystemSource` confines reads to a root and lets the
product render per-client virtual files (a node's grub.cfg, an iPXE script).
"""

# Everything in __all__ of the private modules is re-exported here.
from ._packets import *  # noqa: F403
from ._packets import __all__ as _packets_all
from ._source import *  # noqa: F403
from ._source import __all__ as _source_all
from ._transfer import *  # noqa: F403
from ._transfer import __all__ as _transfer_all

__all__ = [*_packets_all, *_source_all, *_transfer_all]
