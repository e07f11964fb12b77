"""SIGTERM and SIGHUP end a lab command the way Ctrl-C does, so its cleanup runs.

Python turns only SIGINT into KeyboardInterrupt; the default action of SIGTERM and SIGHUP (a closed
terminal window) ends the process on the spot, leaving the namespace, `bootforge serve` and the VMs
running. Inside `interrupt_on_signals()` they raise `Interrupted` (a KeyboardInterrupt) instead, so the
`except KeyboardInterrupt` / `finally` paths that already remove a lab run for all three.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

SIGNALS = (signal.SIGTERM, signal.SIGHUP)


class Interrupted(KeyboardInterrupt):
    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def exit_code(exc: KeyboardInterrupt) -> int:
    """The shell's code for a process ended by the signal behind `exc` (Ctrl-C: 130)."""
    return 128 + (exc.signum if isinstance(exc, Interrupted) else signal.SIGINT)


@contextmanager
def interrupt_on_signals() -> Iterator[None]:
    """Within: the first SIGTERM or SIGHUP raises Interrupted; later ones are ignored, so a terminal
    that sends SIGHUP and then SIGTERM does not cut the cleanup short. Restores the old handlers."""
    raised = False

    def handler(signum: int, _frame: FrameType | None) -> None:
        nonlocal raised
        if not raised:
            raised = True
            raise Interrupted(signum)

    previous = {s: signal.signal(s, handler) for s in SIGNALS}
    try:
        yield
    finally:
        for s, old in previous.items():
            signal.signal(s, old)
