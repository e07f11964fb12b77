"""The `ipmi` hardware type: servers behind an IPMI 2.0 (RMCP+, "lanplus") BMC, through pyghmi.

Interface names are Ironic's ("ipmitool", "ipmitool-sol") so node definitions copied from Ironic
work unchanged, but nothing here runs the ipmitool binary: every exchange goes through pyghmi.

pyghmi blocks and keeps process-wide state (one I/O thread, sessions shared by BMC and credentials).
So every call runs in a bounded thread pool of this module's own (`IpmiClient`, not the event loop's
default executor), at most one call per BMC (address, port) at a time, under pyghmi's own retry
timeouts and an outer `ipmi.timeout`. A BMC that never answers holds one worker thread and its own
lock until pyghmi gives up; other BMCs go on. The caller gets its DriverError at the outer timeout
even if pyghmi is still retrying; the BMC's lock is released only when pyghmi's call returns, so
the next call to the same BMC never overlaps it.

Sessions are cached per BMC and reused for `ipmi.session_idle` seconds (0: a session per call).
Measured through this driver against the lab's emulated BMC on loopback (2 shared cores): a
power-status call, probe included, takes 2.0 ms (median) on a cached session and 5.7 ms with a
session opened and closed around it; the cache also spares the BMC, many of which allow only a
handful of sessions.
Before each call the BMC is probed with one sessionless request on a socket of its own (`probe`),
so a BMC that never answers fails in 3 s without entering pyghmi's shared machinery.

Cipher suites. pyghmi proposes cipher suite 17 (SHA-256) and falls back to 3 (SHA-1) only if the
BMC rejects the proposal; a BMC that answers the proposal with other algorithms (pyghmi's own BMC
server always picks suite 3's) is taken at its word wrongly and the RAKP exchange then fails with a
struct error. pyghmi has no API for this, so `_Session` (a subclass of pyghmi's private
session class, the one scoped patch point of this module) reads the algorithms the BMC chose in the
RMCP+ Open Session Response, and tries the next allowed suite when the BMC refused the proposal or
chose something else. `ipmi_cipher_suite` unset allows 17 then 3; a value allows only that suite.
pyghmi's `Command` and SOL `Console` are then built on that session: pyghmi hands a new Command or
Console the live session that matches its BMC and credentials.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hashlib
import logging
import socket
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Final, TypeVar

import pyghmi.exceptions as pyghmi_exc
from pyghmi.ipmi import command as pyghmi_command
from pyghmi.ipmi import console as pyghmi_console
from pyghmi.ipmi.private import constants as pyghmi_constants
from pyghmi.ipmi.private import session as pyghmi_session

from bootforge.drivers import base
from bootforge.drivers.base import Task
from bootforge.errors import DriverError, InvalidInput

if TYPE_CHECKING:
    from bootforge.config import IpmiSettings, Settings

# pyghmi (1.6.19) guards its session tables with two locks taken in opposite orders: send_payload
# holds KEEPALIVE_SESSIONS while _xmit_packet takes WAITING_SESSIONS, and wait_for_rsp holds
# WAITING_SESSIONS while it times sessions out, whose resend (_timedout -> send_payload) takes
# KEEPALIVE_SESSIONS. A call timing out in one thread (the SOL pump, a worker) while another sends
# deadlocks both, and every later IPMI call of the process waits behind them (seen under load: all
# workers stuck, the process unable to exit). One reentrant lock for both tables has no order to
# invert; both guard short table updates, so the coarser lock costs nothing measurable.
pyghmi_session.WAITING_SESSIONS = pyghmi_session.KEEPALIVE_SESSIONS

__all__ = [
    "PROPERTIES",
    "IpmiClient",
    "IpmiConsole",
    "IpmiInfo",
    "IpmiManagement",
    "IpmiPower",
    "client_for",
    "parse_driver_info",
    "wanted_boot_mode",
]

PROPERTIES: Final = {
    "ipmi_address": "IP address or host name of the BMC. Required.",
    "ipmi_port": "UDP port of the BMC's IPMI (RMCP+) service. Optional, default 623.",
    "ipmi_username": "BMC user name. Optional, default the null user.",
    "ipmi_password": "Password of ipmi_username. Optional, default empty.",
    "ipmi_cipher_suite": "IPMI 2.0 cipher suite: 17 (SHA-256) or 3 (SHA-1). Optional: unset tries 17 "
    "first and falls back to 3; a value uses only that suite.",
    "ipmi_priv_level": "Privilege level of the session: ADMINISTRATOR, OPERATOR or USER. Optional: "
    "unset asks for ADMINISTRATOR and accepts OPERATOR if the BMC refuses it.",
}
CIPHER_SUITES: Final = (17, 3)
LOGIN_RESTARTS: Final = 3
PRIV_LEVELS: Final = {"ADMINISTRATOR": 4, "OPERATOR": 3, "USER": 2}
# bootforge boot device -> pyghmi name (IPMI boot device selector), and back.
_TO_PYGHMI: Final = {"pxe": "network", "disk": "hd", "cdrom": "optical", "bios": "setup", "safe": "safe"}
_FROM_PYGHMI: Final = {v: k for k, v in _TO_PYGHMI.items()}
# RMCP+ Open Session Response (IPMI 2.0 table 13-10): the algorithm bytes the BMC chose, and the
# (authentication, integrity, confidentiality) algorithms of the suites pyghmi speaks (table 22-20).
_ALGO_OFFSETS: Final = (16, 24, 32)
_SUITE_ALGOS: Final = {(3, 4, 1): 17, (1, 1, 1): 3}

T = TypeVar("T")
log = logging.getLogger(__name__)


def _invalid(key: str, why: str) -> InvalidInput:
    return InvalidInput(f"ipmi driver_info {key} {why}", "driver_info")


@dataclass(frozen=True)
class IpmiInfo:
    address: str
    port: int = 623
    username: str = ""
    password: str = field(default="", repr=False)
    cipher_suites: tuple[int, ...] = CIPHER_SUITES
    priv_level: str | None = None  # None: ADMINISTRATOR, OPERATOR if refused (pyghmi's autopriv)

    @property
    def target(self) -> str:
        """address:port as an operator writes it, for messages."""
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"{host}:{self.port}"

    @property
    def key(self) -> tuple[str, int]:
        return (self.address, self.port)

    @property
    def credentials(self) -> tuple[str, str, tuple[int, ...], str | None]:
        """What a cached session must match (the password as a digest, to keep it out of reprs)."""
        digest = hashlib.sha256(self.password.encode()).hexdigest()
        return (self.username, digest, self.cipher_suites, self.priv_level)


def parse_driver_info(info: Mapping[str, Any]) -> IpmiInfo:
    """driver_info -> IpmiInfo, without touching the BMC; errors name the key, never the password."""
    address = info.get("ipmi_address")
    if not isinstance(address, str) or not address.strip():
        raise _invalid("ipmi_address", "is required: the BMC's IP address or host name")
    address = address.strip()
    if any(c.isspace() for c in address):
        raise _invalid("ipmi_address", f"must be one IP address or host name, not {address!r}")
    port = _int_key(info, "ipmi_port", 623)
    if not 1 <= port <= 65535:
        raise _invalid("ipmi_port", f"must be between 1 and 65535, not {port}")
    username = info.get("ipmi_username", "")
    if username is None:
        username = ""
    if not isinstance(username, str) or len(username.encode()) > 16:
        raise _invalid("ipmi_username", "must be a string of at most 16 bytes (IPMI's limit)")
    password = info.get("ipmi_password", "")
    if password is None:
        password = ""
    if not isinstance(password, str) or len(password.encode()) > 20:
        raise _invalid("ipmi_password", "must be a string of at most 20 bytes (IPMI 2.0's limit)")
    suites: tuple[int, ...] = CIPHER_SUITES
    if info.get("ipmi_cipher_suite") not in (None, ""):
        suite = _int_key(info, "ipmi_cipher_suite", 0)
        if suite not in CIPHER_SUITES:
            raise _invalid("ipmi_cipher_suite", f"must be 17 or 3 (the suites pyghmi speaks), not {suite}")
        suites = (suite,)
    priv = info.get("ipmi_priv_level")
    if priv in (None, ""):
        priv = None
    elif not isinstance(priv, str) or priv.upper() not in PRIV_LEVELS:
        raise _invalid("ipmi_priv_level", f"must be one of {', '.join(PRIV_LEVELS)}, not {priv!r}")
    else:
        priv = priv.upper()
    return IpmiInfo(address, port, username, password, suites, priv)


def _int_key(info: Mapping[str, Any], key: str, default: int) -> int:
    value = info.get(key, default)
    if isinstance(value, bool):
        raise _invalid(key, f"must be an integer, not {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    raise _invalid(key, f"must be an integer, not {value!r}")


def wanted_boot_mode(task: Task) -> str:
    """The boot mode to request with a boot device: set_boot_mode's choice, the node's boot_mode,
    its capabilities' boot_mode, else "uefi" (Ironic's default since Yoga)."""
    node = task.node
    chosen = node.driver_internal_info.get("ipmi_boot_mode")
    if chosen in ("bios", "uefi"):
        return str(chosen)
    if getattr(node, "boot_mode", None) in ("bios", "uefi"):
        return str(node.boot_mode)
    caps = (node.properties or {}).get("capabilities")
    if isinstance(caps, str):
        pairs = dict(p.split(":", 1) for p in caps.split(",") if ":" in p)
        caps = pairs
    if isinstance(caps, dict) and caps.get("boot_mode") in ("bios", "uefi"):
        return str(caps["boot_mode"])
    return "uefi"


# -- pyghmi session with the cipher suite fallback --------------------------------------------------


class _Session(pyghmi_session.Session):  # type: ignore[misc]
    """pyghmi's client session, which also tries the next allowed cipher suite when the BMC refuses
    the proposed one or answers it with another suite's algorithms (see the module docstring)."""

    def __new__(cls, *args: Any, suites: tuple[int, ...] = CIPHER_SUITES, **kwargs: Any) -> Any:
        return super().__new__(cls, *args, **kwargs)

    def __init__(self, *args: Any, suites: tuple[int, ...] = CIPHER_SUITES, **kwargs: Any) -> None:
        if not hasattr(self, "initialized"):  # a new session, not a live one pyghmi handed back
            self.bf_suites = suites
            self.bf_index = 0
            self.bf_refused: list[str] = []
            self.bf_restarts = 0
            self.bf_handed_back = False
        else:
            # pyghmi handed back a session it already had for this BMC and these credentials: one
            # another IpmiClient keeps, maybe to a BMC that has since restarted (see _session_answers).
            self.bf_handed_back = True
        super().__init__(*args, **kwargs)

    @property
    def cipher_suite(self) -> int:
        return int(self.bf_suites[self.bf_index])

    def _open_rmcpplus_request(self) -> Any:
        # pyghmi proposes suite 17 when attemptedhash is 256 and suite 3 when it is 1.
        self.attemptedhash = 256 if self.cipher_suite == 17 else 1
        return super()._open_rmcpplus_request()

    def _relog(self) -> Any:
        # pyghmi restarts a login whose RAKP step timed out, and resets the retry timer each time,
        # so a BMC that silently drops RAKP message 1 (pyghmi's own server does, for an unknown
        # user name) kept a login going forever. Give up after LOGIN_RESTARTS restarts in a row.
        if self.sessioncontext != "ESTABLISHED":
            self.bf_restarts += 1
            if self.bf_restarts > LOGIN_RESTARTS:
                step = {"EXPECTINGRAKP2": "RAKP message 2", "EXPECTINGRAKP4": "RAKP message 4"}
                waited = step.get(self.sessioncontext, "the next login step")
                self.onlogon(
                    {
                        "error": f"no answer to the login: waited for {waited} through "
                        f"{LOGIN_RESTARTS} restarts (a BMC that does not know the user name may stay silent)"
                    }
                )
                return None
        return super()._relog()

    def _req_priv_level(self) -> Any:
        self.bf_restarts = 0  # RAKP done: the BMC knows us
        return super()._req_priv_level()

    def _got_rmcp_response(self, data: Any) -> Any:
        if self.sessioncontext == "OPENSESSION" and len(data) >= 2 and data[0] == self.rmcptag:
            proposed = self.cipher_suite
            reason = None
            if data[1] != 0:
                reason = pyghmi_constants.rmcp_codes.get(data[1], f"RMCP+ status {data[1]:#x}")
            elif len(data) >= 36:
                algos = tuple(data[i] & 0x3F for i in _ALGO_OFFSETS)
                chosen = _SUITE_ALGOS.get(algos)
                if chosen != proposed:
                    reason = f"the BMC chose {'cipher suite ' + str(chosen) if chosen else algos} instead"
            if reason is not None:
                self.bf_refused.append(f"cipher suite {proposed}: {reason}")
                if self.bf_index + 1 < len(self.bf_suites):
                    self.bf_index += 1
                    self._open_rmcpplus_request()
                    return None
                self.onlogon({"error": "; ".join(self.bf_refused)})
                return -9
        return super()._got_rmcp_response(data)


# -- pyghmi's lost wake-up --------------------------------------------------------------------------

# A thread waiting for a BMC's reply registers with pyghmi's I/O thread (session._io_wait) and then
# waits on an event *without a timeout* until that thread sets it. Two ways this goes wrong:
# * a reply that arrives before the registration wakes nobody, so the waiter sleeps until its
#   retransmit timer: measured against the emulated BMC, 55 of 300 power-status calls took 0.5-1 s
#   instead of 0.4 ms;
# * a wake-up the I/O thread misses is never made up: with 200 emulated BMCs in one process and
#   16 concurrent workers, some runs left threads (client and BMC server alike) waiting for good,
#   so a worker and its BMC's lock were lost for the life of the process.
# So `_io_wait` is replaced by one that registers the same way but waits at most WAKEUP_SLICE
# seconds. pyghmi's callers loop until their reply, deadline or retransmit timer, re-checking their
# queues after every wake-up, so an early return costs a loop turn, never a reply (after the fix:
# 300 of 300 calls below 2 ms). This is the second patch point into pyghmi 1.6's private session
# module, and like the first one it is checked by the tests against the emulated BMC.
WAKEUP_SLICE: Final = 0.02


def _bounded_io_wait(timeout: float, myaddr: Any = None, evq: Any = None) -> None:
    evt = threading.Event()
    if evq is not None:
        evq.append(evt)  # pyghmi sets these when a command ends, to wake queued callers
    wait = max(0.0, min(timeout, WAKEUP_SLICE))
    deadline = pyghmi_session._monotonic_time() + wait
    pyghmi_session.ioqueue.append((deadline, evt, myaddr))
    if deadline < pyghmi_session.selectdeadline and pyghmi_session.iosockets:
        # The I/O thread sleeps in select() until its own deadline: a datagram to itself wakes it
        # to take our (earlier) deadline into account, as pyghmi does.
        own = pyghmi_session.iosockets[0]
        with contextlib.suppress(OSError):
            own.sendto(b"\x01", (pyghmi_session.myself, own.getsockname()[1]))
    evt.wait(wait)


# The third: pyghmi's _io_sendto switches the (shared) socket to blocking mode before each send,
# while its I/O thread switches it back to non-blocking before each read. A send from another
# thread between the two leaves the I/O thread blocked in recvfrom() on one socket until a packet
# comes to *that* socket, and every other socket of the process goes unread meanwhile: caught in
# the stack dumps of stalled runs (200 emulated BMCs, 16 workers: healthy BMCs did not answer for
# seconds). A datagram send needs no blocking mode; errors are ignored, as pyghmi ignores them (the
# retransmit timer covers a lost packet).
def _sendto(sock: Any, packet: Any, sockaddr: Any) -> None:
    with contextlib.suppress(OSError):
        sock.sendto(packet, sockaddr)


def install_pyghmi_fixes() -> None:
    """Install the bounded wait and the mode-neutral send into pyghmi (idempotent; the emulated BMC
    calls it too)."""
    pyghmi_session._io_wait = _bounded_io_wait
    pyghmi_session._io_sendto = _sendto


install_pyghmi_fixes()


# -- the client: thread pool, per-BMC locks, sessions, timeouts -------------------------------------


@dataclass
class _Cached:
    command: Any  # pyghmi Command
    credentials: tuple[str, str, tuple[int, ...], str | None]
    used: float


class IpmiClient:
    """Runs blocking pyghmi calls for the event loop: bounded pool, one call per BMC, timeouts."""

    def __init__(self, workers: int = 16, timeout: float = 20.0, session_idle: float = 20.0) -> None:
        self.timeout = timeout
        self.session_idle = session_idle
        self._pool = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="ipmi")
        # asyncio locks belong to one loop; tests (and only tests) run several loops in turn.
        self._locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple[str, int], asyncio.Lock]]
        self._locks = weakref.WeakKeyDictionary()
        self._sessions: dict[tuple[str, int], _Cached] = {}
        self._sessions_lock = threading.Lock()

    def _lock(self, key: tuple[str, int]) -> asyncio.Lock:
        loop = asyncio.get_running_loop()
        return self._locks.setdefault(loop, {}).setdefault(key, asyncio.Lock())

    async def call(
        self, info: IpmiInfo, doing: str, fn: Callable[[Any], T], timeout: float | None = None
    ) -> T:
        """Run fn(pyghmi Command) for the BMC of `info`; DriverError naming the BMC and `doing`."""
        limit = timeout or self.timeout
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limit
        lock = self._lock(info.key)
        try:
            await asyncio.wait_for(lock.acquire(), limit)
        except TimeoutError:
            raise DriverError(
                f"IPMI {doing} at {info.target}: the BMC is still busy with an earlier call "
                f"after {limit:.0f} s"
            ) from None
        try:
            fut = loop.run_in_executor(self._pool, self._run, info, fn)
        except BaseException:
            lock.release()
            raise
        # The lock follows the thread, not this coroutine: released when pyghmi returns. The
        # result of a call the caller gave up on is read here, so asyncio does not log it as lost.
        fut.add_done_callback(lambda f: _release(lock, f))
        try:
            return await asyncio.wait_for(asyncio.shield(fut), max(deadline - loop.time(), 0.01))
        except TimeoutError:
            raise DriverError(f"IPMI {doing} at {info.target}: no answer within {limit:.0f} s") from None
        except DriverError:
            raise
        except Exception as e:
            raise DriverError(f"IPMI {doing} at {info.target} failed: {_describe(e, info)}") from None

    def _run(self, info: IpmiInfo, fn: Callable[[Any], T]) -> T:
        # Probed on every call, not only before a login: a BMC that went silent under a cached
        # session held pyghmi (and this worker, and the BMC's lock) for 28 s before it gave up;
        # the probe fails in 3 s and costs one round trip to a BMC that answers.
        probe(info)
        cmd = self._command(info)
        try:
            result = fn(cmd)
        except BaseException:
            # The session may be what broke: forget it, and the next call opens a new one.
            with self._sessions_lock:
                cached = self._sessions.get(info.key)
                if cached is not None and cached.command is cmd:
                    del self._sessions[info.key]
            _logout(cmd)
            raise
        if self.session_idle > 0:
            with self._sessions_lock:
                cached = self._sessions.get(info.key)
                if cached is not None and cached.command is cmd:
                    cached.used = time.monotonic()
        else:
            _logout(cmd)
        return result

    def _command(self, info: IpmiInfo) -> Any:
        with self._sessions_lock:
            cached = self._sessions.pop(info.key, None)
        if cached is not None:
            sess = cached.command.ipmi_session
            # A session carrying an SOL console is kept alive by the console's keepalives.
            fresh = time.monotonic() - cached.used < self.session_idle or sess.sol_handler is not None
            usable = cached.credentials == info.credentials and fresh and sess.logged and not sess.broken
            if usable and _session_answers(sess):
                with self._sessions_lock:
                    self._sessions[info.key] = cached
                return cached.command
            if usable:
                log.info("IPMI %s: the BMC no longer knows the kept session; logging in again", info.target)
            _logout(cached.command)
        cmd = open_command(info)
        if self.session_idle > 0:
            with self._sessions_lock:
                self._sessions[info.key] = _Cached(cmd, info.credentials, time.monotonic())
        return cmd

    def session_of(self, info: IpmiInfo) -> Any:
        """The cached pyghmi Command of a BMC, or None (for SOL, which shares the session)."""
        with self._sessions_lock:
            cached = self._sessions.get(info.key)
        return cached.command if cached else None

    def close(self) -> None:
        with self._sessions_lock:
            cached, self._sessions = list(self._sessions.values()), {}
        for c in cached:
            _logout(c.command)
        self._pool.shutdown(wait=False, cancel_futures=True)


def _release(lock: asyncio.Lock, fut: asyncio.Future[Any]) -> None:
    lock.release()
    if not fut.cancelled():
        fut.exception()


# Before each call, one sessionless request (Get Channel Authentication Capabilities, which every
# IPMI 2.0 BMC answers) on a socket of our own. A silent BMC then costs a worker 3 s, not pyghmi's
# 5 s for a login or 28 s for a command on a cached session (measured), and never enters pyghmi's
# shared event loop, whose callbacks run in whichever thread polls it.
PROBE_TRIES: Final = (0.5, 1.0, 1.5)  # seconds to wait for the answer to each try


def _probe_packet(seq: int) -> bytes:
    """IPMI 1.5 sessionless Get Channel Authentication Capabilities (IPMI 2.0 spec 22.13)."""
    header = bytes([0x20, 0x06 << 2])  # responder: the BMC (0x20), netfn App, LUN 0
    body = bytes([0x81, (seq & 0x3F) << 2, 0x38, 0x8E, 0x04])  # 0x8E: IPMI 2.0 data, this channel
    message = header + bytes([-sum(header) & 0xFF]) + body + bytes([-sum(body) & 0xFF])
    session = bytes([0x00]) + bytes(8) + bytes([len(message)])  # auth none, sequence 0, session 0
    return b"\x06\x00\xff\x07" + session + message  # RMCP v1, class IPMI


def probe(info: IpmiInfo) -> None:
    """Raise _Unreachable unless the BMC answers a sessionless request (blocking, at most 3 s)."""
    try:
        family, _, _, _, sockaddr = socket.getaddrinfo(info.address, info.port, 0, socket.SOCK_DGRAM)[0]
    except OSError as e:
        raise _Unreachable(f"cannot resolve the address: {e.strerror or e}") from None
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(sockaddr)  # only the BMC's answers reach this socket
            for seq, wait in enumerate(PROBE_TRIES, 1):
                sock.send(_probe_packet(seq))
                sock.settimeout(wait)
                try:
                    if sock.recv(512).startswith(b"\x06\x00\xff\x07"):
                        return
                except TimeoutError:
                    continue
        except OSError as e:  # e.g. ICMP port unreachable: nothing listens there
            raise _Unreachable(e.strerror or str(e)) from None
    raise _Unreachable(
        f"no answer to Get Channel Authentication Capabilities "
        f"({len(PROBE_TRIES)} tries in {sum(PROBE_TRIES):.0f} s)"
    )


class _Unreachable(Exception):
    """The BMC did not answer the probe; the message says how."""


def open_command(info: IpmiInfo) -> Any:
    """Log in to the BMC (blocking; probe() it first) and return a pyghmi Command on that session."""
    priv = PRIV_LEVELS[info.priv_level] if info.priv_level else None
    user, password = _credentials(info)

    def login() -> Any:
        return _Session(
            bmc=info.address,
            userid=user,
            password=password,
            port=info.port,
            privlevel=priv,
            suites=info.cipher_suites,
        )

    sess = login()
    if getattr(sess, "bf_handed_back", False) and not _session_answers(sess):
        log.info("IPMI %s: the BMC no longer knows pyghmi's live session; logging in again", info.target)
        _logout_session(sess)  # out of pyghmi's registry: the next _Session is a new login
        sess = login()
    # pyghmi's Command looks up the live session for this BMC and these credentials: ours.
    cmd = pyghmi_command.Command(
        bmc=info.address, userid=user, password=password, port=info.port, privlevel=priv
    )
    if cmd.ipmi_session is not sess:
        _logout(cmd)
        raise DriverError(f"IPMI session to {info.target} was lost while it was being set up")
    return cmd


# A BMC that restarted (or a new BMC on the same address and port) does not know the sessions of
# the old one and drops their packets, as the IPMI spec lets it. pyghmi then retransmits for ~8 s
# and logs in again, and the command resent on the new login waited another ~10 s (measured
# against the emulated BMC restarted on its port: 18-19 s, past the default 15 s timeout), so a
# kept session, or one that pyghmi hands back from its process-wide registry, answers one Get
# Device ID first, sent once and waited for SESSION_CHECK_WAIT seconds outside pyghmi's retry
# machinery. Measured on loopback (300 power-status calls on a kept session, 2 shared cores): the
# median went from 0.96 to 1.26 ms; a forgotten session is replaced by a new login after
# SESSION_CHECK_WAIT (1.0 s in all, instead of 18 s).
SESSION_CHECK_WAIT: Final = 1.0


def _session_answers(sess: Any) -> bool:
    """Whether the BMC still knows this logged-in session (blocking, at most SESSION_CHECK_WAIT)."""
    answered = threading.Event()
    replies: list[Any] = []

    def got(reply: Any) -> None:
        replies.append(reply)
        answered.set()

    try:
        # retry=False: no retransmit, no relogin; with a callback pyghmi returns at once and leaves
        # incommand and evq to the caller.
        sess.raw_command(netfn=6, command=1, retry=False, callback=got)
    except pyghmi_exc.IpmiException:
        return False
    deadline = time.monotonic() + SESSION_CHECK_WAIT
    try:
        while not answered.is_set() and time.monotonic() < deadline:
            pyghmi_session.Session.wait_for_rsp(timeout=min(0.05, max(deadline - time.monotonic(), 0)))
    finally:
        sess.incommand = False
        while sess.evq:
            sess.evq.popleft().set()
    if not replies:
        sess.lastpayload = None  # never resend the unanswered check
        return False
    # Any reply, even an error code, came inside the session: the BMC knows it.
    return not sess.broken


def _credentials(info: IpmiInfo) -> tuple[bytes, bytes]:
    """Credentials as bytes, the form pyghmi keeps them in: pyghmi compares and forgets sessions by
    the values it was given, so str credentials leave a stale entry behind that makes the next
    session to the same BMC wait forever (pyghmi 1.6.19, Session.__new__ / initting_sessions)."""
    return info.username.encode(), info.password.encode()


def _logout(cmd: Any) -> None:
    """End a Command's session, unless an SOL console rides on it (stop_console ends that)."""
    _logout_session(cmd.ipmi_session)


def _logout_session(sess: Any) -> None:
    if getattr(sess, "sol_handler", None) is not None:
        return
    try:
        sess.logout()
    except Exception:  # the BMC may be gone; the session is forgotten either way
        return


def _describe(e: BaseException, info: IpmiInfo) -> str:
    """An exception as one line for the operator, with the password scrubbed out."""
    if isinstance(e, pyghmi_exc.IpmiException):
        text = str(e.args[0]) if e.args and e.args[0] else "timeout"
        if text == "timeout":  # pyghmi says None or "timeout" when its retries ran out
            text = "no answer (pyghmi gave up after its retries)"
    elif isinstance(e, _Unreachable):
        text = str(e)
    elif isinstance(e, OSError):
        text = f"{type(e).__name__}: {e.strerror or e}"
    else:
        text = f"{type(e).__name__}: {e}"
    if info.password:
        text = text.replace(info.password, "***")
    return text


_clients: dict[tuple[int, float, float], IpmiClient] = {}
_clients_lock = threading.Lock()


def client_for(settings: IpmiSettings) -> IpmiClient:
    """The process's client for these settings: power, management and console of a node share it,
    and with it the per-BMC lock and the cached session."""
    key = (settings.workers, settings.timeout, settings.session_idle)
    with _clients_lock:
        if key not in _clients:
            _clients[key] = IpmiClient(settings.workers, settings.timeout, settings.session_idle)
        return _clients[key]


# -- interfaces ---------------------------------------------------------------------------------


class _IpmiBase:
    name: ClassVar[str] = "ipmitool"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.client = client_for(settings.ipmi)

    def get_properties(self) -> dict[str, str]:
        return dict(PROPERTIES)

    def validate(self, task: Task) -> None:
        parse_driver_info(task.node.driver_info)

    def _info(self, task: Task) -> IpmiInfo:
        return parse_driver_info(task.node.driver_info)


class IpmiPower(_IpmiBase, base.PowerInterface):
    def get_supported_power_states(self, task: Task) -> list[str]:
        return [base.POWER_ON, base.POWER_OFF, base.REBOOT, base.SOFT_POWER_OFF, base.SOFT_REBOOT]

    async def get_power_state(self, task: Task) -> str:
        info = self._info(task)
        return await self._state(info)

    async def _state(self, info: IpmiInfo) -> str:
        got = await self.client.call(info, "power status", lambda c: c.get_power())
        return base.POWER_ON if got.get("powerstate") == "on" else base.POWER_OFF

    async def set_power_state(self, task: Task, state: str, timeout: float | None = None) -> None:
        info = self._info(task)
        limit = timeout or self.settings.power_state_change_timeout
        if state == base.POWER_ON:
            await self._switch(info, "on", base.POWER_ON, limit)
        elif state == base.POWER_OFF:
            await self._switch(info, "off", base.POWER_OFF, limit)
        elif state == base.REBOOT:
            await self.reboot(task, timeout)
        elif state == base.SOFT_POWER_OFF:
            await self._soft_off(task, info, limit)
        elif state == base.SOFT_REBOOT:
            await self._soft_off(task, info, limit)
            await self._switch(info, "on", base.POWER_ON, limit)
        else:
            raise InvalidInput(f"ipmi power interface does not support {state!r}", "target")

    async def reboot(self, task: Task, timeout: float | None = None) -> None:
        """Power off, then on, as Ironic's ipmitool driver does: many BMCs (and virtualbmc) apply a
        new boot device only at power on, not at a chassis reset."""
        info = self._info(task)
        limit = timeout or self.settings.power_state_change_timeout
        await self._switch(info, "off", base.POWER_OFF, limit)
        await self._switch(info, "on", base.POWER_ON, limit)

    async def _switch(self, info: IpmiInfo, verb: str, want: str, limit: float) -> None:
        # pyghmi reads the state first and sends nothing if it is already there.
        await self.client.call(info, f"power {verb}", lambda c: c.set_power(verb, wait=False))
        if not await self._wait(info, want, limit):
            raise DriverError(f"IPMI power {verb} at {info.target}: still not {want} after {limit:.0f} s")

    async def _soft_off(self, task: Task, info: IpmiInfo, limit: float) -> None:
        """ACPI soft off (IPMI chassis control "soft shutdown"), hard off if the OS ignores it."""
        if await self._state(info) == base.POWER_OFF:
            return
        await self.client.call(info, "soft power off", lambda c: c.set_power("shutdown", wait=False))
        if await self._wait(info, base.POWER_OFF, limit):
            return
        await task.record(
            "power",
            f"the machine ignored the ACPI soft power off for {limit:.0f} s; powering off hard",
            "warning",
        )
        await self._switch(info, "off", base.POWER_OFF, limit)

    async def _wait(self, info: IpmiInfo, want: str, limit: float) -> bool:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limit
        interval = self.settings.ipmi.power_poll_interval
        while True:
            if await self._state(info) == want:
                return True
            if loop.time() + interval > deadline:
                return False
            await asyncio.sleep(interval)


class IpmiManagement(_IpmiBase, base.ManagementInterface):
    """Boot device override (IPMI boot flags): once or persistent, with the UEFI/legacy request bit.

    IPMI can only *request* a boot mode together with a boot device; set_boot_mode remembers the
    mode for the following set_boot_device calls and rewrites a pending override at once.
    """

    def get_supported_boot_devices(self, task: Task) -> list[str]:
        return list(_TO_PYGHMI)

    def get_supported_boot_modes(self, task: Task) -> list[str]:
        return ["bios", "uefi"]

    async def set_boot_device(self, task: Task, device: str, persistent: bool = False) -> None:
        if device not in _TO_PYGHMI:
            raise InvalidInput(
                f"ipmi management does not support boot device {device!r}; "
                f"supported: {', '.join(_TO_PYGHMI)}",
                "boot_device",
            )
        info = self._info(task)
        uefi = wanted_boot_mode(task) == "uefi"
        await self.client.call(
            info,
            f"set boot device {device}",
            lambda c: _checked(c.set_bootdev(_TO_PYGHMI[device], persist=persistent, uefiboot=uefi)),
        )

    async def get_boot_device(self, task: Task) -> dict[str, Any]:
        got = await self._bootdev(self._info(task))
        device = _FROM_PYGHMI.get(str(got.get("bootdev")))
        return {"boot_device": device, "persistent": bool(got.get("persistent")) if device else None}

    async def _bootdev(self, info: IpmiInfo) -> dict[str, Any]:
        got: dict[str, Any] = await self.client.call(info, "read the boot device", lambda c: c.get_bootdev())
        return got

    async def set_boot_mode(self, task: Task, mode: str) -> None:
        if mode not in ("bios", "uefi"):
            raise InvalidInput(f"boot mode must be bios or uefi, not {mode!r}", "boot_mode")
        task.set_internal(ipmi_boot_mode=mode)
        current = await self.get_boot_device(task)
        if current["boot_device"] is not None:
            await self.set_boot_device(task, current["boot_device"], bool(current["persistent"]))

    async def get_boot_mode(self, task: Task) -> str | None:
        got = await self._bootdev(self._info(task))
        if got.get("bootdev") in (None, "default"):
            return wanted_boot_mode(task)
        return "uefi" if got.get("uefimode") else "bios"

    async def bmc_report(self, task: Task) -> base.BmcReport:
        info = self._info(task)
        try:
            got = await self.client.call(info, "read the BMC's identity", _report_data)
        except DriverError as e:
            return base.BmcReport(False, e.message)
        dev = got["device"]
        boot = got["bootdev"]
        return base.BmcReport(
            True,
            f"IPMI 2.0 at {info.target}, cipher suite {got['suite']}",
            power_state=base.POWER_ON if got["power"] == "on" else base.POWER_OFF,
            boot_devices=self.get_supported_boot_devices(task),
            boot_modes=self.get_supported_boot_modes(task),
            virtual_media=[],
            secure_boot=None,
            vendor=f"IANA enterprise {dev['manufacturer_id']}",
            model=f"product {dev['product_id']}",
            firmware=str(dev["firmware_version"]),
            extra={
                "device_id": dev["device_id"],
                "device_revision": dev["device_revision"],
                "boot_override": _FROM_PYGHMI.get(str(boot.get("bootdev"))),
                "boot_override_persistent": bool(boot.get("persistent")),
                "boot_override_uefi": bool(boot.get("uefimode")),
                "cipher_suites_refused": list(got["refused"]),
            },
        )


def _report_data(c: Any) -> dict[str, Any]:
    sess = c.ipmi_session
    return {
        "power": c.get_power().get("powerstate"),
        "device": c._get_device_id(),  # pyghmi's Get Device ID parser (no public wrapper)
        "bootdev": c.get_bootdev(),
        "suite": getattr(sess, "cipher_suite", "?"),
        "refused": getattr(sess, "bf_refused", []),
    }


def _checked(reply: Any) -> Any:
    # pyghmi's set_bootdev returns {"error": ...} for some failures instead of raising.
    if isinstance(reply, dict) and "error" in reply:
        raise pyghmi_exc.IpmiException(str(reply["error"]))
    return reply


# -- Serial over LAN ---------------------------------------------------------------------------------


class _SolLog:
    """Appends what a BMC's SOL sends to the node's console log. At `max_bytes` the log is rotated:
    the current file becomes <log>.1 (replacing an older one) and a new one is started, so a node
    keeps between max_bytes and twice that of recent console output."""

    def __init__(self, path: Path, max_bytes: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = path.open("ab")
        self.error: str | None = None

    def __call__(self, data: Any) -> None:
        """pyghmi's SOL output handler: bytes from the console, or a dict with info or error."""
        if isinstance(data, dict):
            if "error" in data:
                self.error = str(data["error"])
            text = f"\r\n[bootforge: SOL {'error' if 'error' in data else 'info'}: "
            data = (text + str(data.get("error") or data.get("info")) + "]\r\n").encode()
        elif isinstance(data, str):
            data = data.encode()
        self.write(bytes(data))

    def write(self, data: bytes) -> None:
        with self._lock:
            if self._file.closed:
                return
            if self._file.tell() + len(data) > self.max_bytes:
                self._file.close()
                self.path.replace(self.path.with_name(self.path.name + ".1"))
                self._file = self.path.open("ab")
            self._file.write(data)
            self._file.flush()

    def close(self) -> None:
        with self._lock:
            self._file.close()


@dataclass
class _Sol:
    info: IpmiInfo
    console: Any
    log: _SolLog


class _SolPump:
    """pyghmi delivers SOL data only while some thread calls its wait_for_rsp: this one, while any
    console is open."""

    def __init__(self) -> None:
        self._active = 0
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def acquire(self) -> None:
        with self._lock:
            self._active += 1
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="ipmi-sol", daemon=True)
                self._thread.start()

    def release(self) -> None:
        with self._lock:
            self._active -= 1

    def _run(self) -> None:
        while True:
            with self._lock:
                if self._active <= 0:
                    self._thread = None
                    return
            try:
                pyghmi_session.Session.wait_for_rsp(timeout=0.5)
            except Exception as e:  # a bad packet must not end SOL capture for every node
                log.warning("SOL: pyghmi failed handling a packet: %s: %s", type(e).__name__, e)
                time.sleep(0.1)


_pump = _SolPump()


class IpmiConsole(_IpmiBase, base.ConsoleInterface):
    """Serial over LAN captured into the node's console log (base.console_log_path).

    The SOL payload rides on the node's cached IPMI session (pyghmi multiplexes SOL with commands).
    A console that the BMC drops (BMC reboot, session lost) writes the reason into the log and stays
    down until stop_console / start_console.
    """

    name = "ipmitool-sol"

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self._open: dict[str, _Sol] = {}

    async def start_console(self, task: Task) -> None:
        uuid = task.node.uuid
        if uuid in self._open:
            if self._open[uuid].log.error is None:
                return
            await self.stop_console(task)
        info = self._info(task)
        path = base.console_log_path(self.settings, uuid)
        sol_log = _SolLog(path, self.settings.ipmi.console_log_max_bytes)
        _pump.acquire()
        try:
            console = await self.client.call(
                info, "start the SOL console", lambda c: _start_sol(c, info, sol_log)
            )
        except BaseException:
            _pump.release()
            sol_log.close()
            raise
        self._open[uuid] = _Sol(info, console, sol_log)
        if sol_log.error is not None:
            await self.stop_console(task)
            raise DriverError(f"IPMI SOL at {info.target}: {sol_log.error}")

    async def stop_console(self, task: Task) -> None:
        sol = self._open.pop(task.node.uuid, None)
        if sol is None:
            return
        try:
            await self.client.call(sol.info, "stop the SOL console", lambda c: _stop_sol(sol.console))
        finally:
            _pump.release()
            sol.log.close()

    async def get_console(self, task: Task) -> dict[str, Any]:
        sol = self._open.get(task.node.uuid)
        if sol is None:
            return {}
        found: dict[str, Any] = {"type": "log", "url": str(sol.log.path)}
        if sol.log.error is not None:
            found["error"] = sol.log.error  # the BMC dropped the console; stop and start to retry
        return found


SOL_ACTIVATE_WAIT = 10.0


def _stop_sol(console: Any) -> None:
    session = console.ipmi_session
    console.close()
    # pyghmi's close leaves its handler on the session, which would keep the session from ever
    # being logged out (see _logout).
    if session is not None and getattr(session.sol_handler, "__self__", None) is console:
        session.sol_handler = None


def _start_sol(cmd: Any, info: IpmiInfo, sol_log: _SolLog) -> Any:
    """Activate the SOL payload on the BMC's live session; wait until the BMC said yes or no."""
    user, password = _credentials(info)
    console = pyghmi_console.Console(
        bmc=info.address,
        userid=user,
        password=password,
        iohandler=sol_log,
        port=info.port,
        force=True,
    )
    if console.ipmi_session is not cmd.ipmi_session and console.ipmi_session is not None:
        console.close()
        raise DriverError(f"IPMI SOL at {info.target}: the console did not get the node's session")
    deadline = time.monotonic() + SOL_ACTIVATE_WAIT
    while not (console.connected or console.broken or sol_log.error):
        if time.monotonic() > deadline:
            console.close()
            raise DriverError(f"IPMI SOL at {info.target}: no answer to payload activation")
        pyghmi_session.Session.wait_for_rsp(timeout=0.2)
    return console
