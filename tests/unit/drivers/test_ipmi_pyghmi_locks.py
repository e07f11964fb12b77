"""bootforge's IPMI driver makes pyghmi's two session-table locks one (see bootforge/drivers/ipmi.py:
pyghmi takes them in opposite orders, and a timeout in one thread while another sends deadlocked
every IPMI worker of the process)."""

from __future__ import annotations

import threading

from pyghmi.ipmi.private import session as pyghmi_session

import bootforge.drivers.ipmi  # noqa: F401  (the import applies it)


def test_pyghmi_session_tables_share_one_reentrant_lock() -> None:
    assert pyghmi_session.WAITING_SESSIONS is pyghmi_session.KEEPALIVE_SESSIONS
    assert isinstance(pyghmi_session.KEEPALIVE_SESSIONS, type(threading.RLock()))


def test_the_two_orders_pyghmi_uses_cannot_deadlock() -> None:
    """Thread A takes KEEPALIVE then WAITING (send_payload -> _xmit_packet), thread B WAITING then
    KEEPALIVE (wait_for_rsp -> _timedout -> send_payload), each pausing in between until the other
    holds its first lock or has finished: with two locks they would wait for each other forever."""
    keepalive, waiting = pyghmi_session.KEEPALIVE_SESSIONS, pyghmi_session.WAITING_SESSIONS
    a_first, b_first = threading.Event(), threading.Event()
    done: list[str] = []

    def a() -> None:
        with keepalive:
            a_first.set()
            b_first.wait(1)  # B cannot get its first lock while A holds the shared one
            with waiting:
                done.append("a")

    def b() -> None:
        a_first.wait(5)
        with waiting:
            b_first.set()
            with keepalive:
                done.append("b")

    threads = [threading.Thread(target=a, daemon=True), threading.Thread(target=b, daemon=True)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert not any(t.is_alive() for t in threads), "deadlocked"
    assert sorted(done) == ["a", "b"]
