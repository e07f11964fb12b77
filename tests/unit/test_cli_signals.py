"""bootforge.cli.signals: SIGTERM and SIGHUP interrupt like Ctrl-C inside the block, once."""

from __future__ import annotations

import os
import signal

import pytest

from bootforge.cli.signals import Interrupted, exit_code, interrupt_on_signals


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_signal_interrupts_once_then_is_ignored(sig: signal.Signals) -> None:
    before = signal.getsignal(sig)
    with pytest.raises(Interrupted) as caught, interrupt_on_signals():
        try:
            os.kill(os.getpid(), sig)  # delivered to this (main) thread before kill returns
            pytest.fail("the signal did not interrupt")
        finally:
            os.kill(os.getpid(), signal.SIGTERM)  # during cleanup: ignored
            os.kill(os.getpid(), signal.SIGHUP)
    assert caught.value.signum == sig
    assert isinstance(caught.value, KeyboardInterrupt)  # the Ctrl-C paths handle it
    assert exit_code(caught.value) == 128 + sig
    assert signal.getsignal(sig) is before


def test_ctrl_c_exit_code() -> None:
    assert exit_code(KeyboardInterrupt()) == 130
