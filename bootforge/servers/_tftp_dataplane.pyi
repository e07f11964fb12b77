# Typed surface of the C extension _tftp_dataplane.c (see its header comment).

COMPLETED: int
CLIENT_ERROR: int
TIMED_OUT: int
READ_ERROR: int
CANCELLED: int

# (token, outcome, acked, retransmits, dropped, stale_acks, foreign_tid, send_errors,
#  socket_errors, elapsed seconds, the client's ERROR datagram or b"")
Record = tuple[int, int, int, int, int, int, int, int, int, float, bytes]

class DataPlane:
    def __init__(self) -> None: ...
    @property
    def running(self) -> int: ...
    def fileno(self) -> int: ...
    def start(
        self,
        token: int,
        sock: int,
        file: int,
        client: bytes,
        blksize: int,
        size: int,
        timeout: float,
        max_retries: int,
        retries: int,
        acked: int,
        sent: int,
    ) -> bool: ...
    def drain(self) -> list[Record]: ...
    def stop(self, timeout: float, /) -> int: ...
    def close(self) -> None: ...
