"""Private network namespaces for tests and the lab: namespaces, bridges, veth pairs, taps.

Everything is built with iproute2's ``ip`` and lives *inside* namespaces this module creates: links
are created directly in their target namespace (``ip -n NS link add ... peer ... netns OTHER``), so
nothing ever appears in, or touches, the host's own network namespace.

Names carry a per-run prefix (``bf-<pid>-<n>-``) so parallel runs never collide, and a run that died
without cleaning up can be swept by that prefix (:func:`sweep`, :func:`stale_prefixes`).

:func:`open_socket_in` creates a socket inside a namespace from the current process: a socket stays
in the namespace it was created in, so a short-lived thread enters the namespace, creates the socket
and exits. The calling thread never changes namespace, so an asyncio server in the main thread can
serve inside a namespace through sockets made this way.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import itertools
import json
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import threading
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from ipaddress import IPv4Interface
from pathlib import Path
from types import TracebackType
from typing import Any

__all__ = [
    "NETNS_DIR",
    "Bridge",
    "Endpoint",
    "Namespace",
    "NetnsError",
    "NetnsUnavailable",
    "SocketFactory",
    "Topology",
    "check_available",
    "list_namespaces",
    "open_socket_in",
    "stale_prefixes",
    "sweep",
    "unique_prefix",
]

NETNS_DIR = Path("/var/run/netns")
CLONE_NEWNET = 0x40000000
IFNAMSIZ = 15  # usable characters of a Linux interface name
_PROCESS_GRACE_S = 5.0

# A prefix written by unique_prefix(): "bf-<pid>-<n>-". Only such prefixes are considered stale.
_RUN_PREFIX_RE = re.compile(r"^(?P<base>[a-z][a-z0-9]*)-(?P<pid>\d+)-(?P<n>\d+)-")
_SAFE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_counter = itertools.count(1)
_counter_lock = threading.Lock()


class NetnsError(RuntimeError):
    """An ``ip`` command or a namespace operation failed."""


class NetnsUnavailable(NetnsError):
    """Namespaces cannot be used here at all; the message names what is missing."""


def check_available() -> None:
    """Raise :class:`NetnsUnavailable` unless we are root and ``ip`` exists."""
    if shutil.which("ip") is None:
        raise NetnsUnavailable("the `ip` command (Debian package iproute2)")
    if os.geteuid() != 0:
        raise NetnsUnavailable("root (CAP_SYS_ADMIN) to create network namespaces")


def unique_prefix(base: str = "bf") -> str:
    """Return a prefix unique to this process and call, e.g. ``bf-4711-3-``."""
    with _counter_lock:
        n = next(_counter)
    return f"{base}-{os.getpid()}-{n}-"


def _ip(*args: str, ns: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    argv = ["ip", *(("-n", ns) if ns else ()), *args]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=30)
    except FileNotFoundError as exc:
        raise NetnsUnavailable("the `ip` command (Debian package iproute2)") from exc
    if check and proc.returncode != 0:
        raise NetnsError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def _check_name(name: str) -> str:
    if not _SAFE_NAME_RE.match(name):
        raise ValueError(f"unsafe namespace or link name: {name!r}")
    return name


def list_namespaces() -> list[str]:
    """Names of all named namespaces (``ip netns list``), without the ``(id: N)`` suffix."""
    out = _ip("netns", "list").stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


@functools.cache
def _libc_setns() -> Any:
    path = ctypes.util.find_library("c") or "libc.so.6"
    libc = ctypes.CDLL(path, use_errno=True)
    fn = libc.setns
    fn.argtypes = [ctypes.c_int, ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


def _enter_netns(ns_name: str) -> None:
    """Move the *calling thread* into the namespace; only ever called from a disposable thread."""
    ns_path = NETNS_DIR / _check_name(ns_name)
    fd = os.open(ns_path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _libc_setns()(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({ns_path}): {os.strerror(err)}")
    finally:
        os.close(fd)


def open_socket_in(ns_name: str, family: int, type: int, proto: int = 0) -> socket.socket:
    """Create a socket inside namespace ``ns_name`` without moving the calling thread.

    A fresh thread joins the namespace (setns with CLONE_NEWNET is allowed in multithreaded
    processes), creates the socket and ends, taking its namespace membership with it. Costs a
    thread start per call; use :class:`SocketFactory` for many sockets.
    """
    result: Future[socket.socket] = Future()

    def worker() -> None:
        try:
            _enter_netns(ns_name)
            result.set_result(socket.socket(family, type, proto))
        except BaseException as exc:  # re-raised in the caller's thread
            result.set_exception(exc)

    thread = threading.Thread(target=worker, name=f"netns-socket-{ns_name}", daemon=True)
    thread.start()
    thread.join()
    return result.result()


_SocketRequest = tuple[int, int, int, "Future[socket.socket]"]


class SocketFactory:
    """Creates sockets inside one namespace through a long-lived thread parked there.

    For servers that open a socket per transfer (TFTP): no thread start per socket. The thread
    does nothing but create sockets, so nothing else ever runs in the namespace by accident.
    """

    def __init__(self, ns_name: str) -> None:
        self.ns_name = _check_name(ns_name)
        self._requests: queue.SimpleQueue[_SocketRequest | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._closed = False
        ready: Future[None] = Future()
        self._thread = threading.Thread(
            target=self._serve, args=(ready,), name=f"netns-sockets-{ns_name}", daemon=True
        )
        self._thread.start()
        try:
            ready.result()
        except BaseException:
            self._closed = True
            self._thread.join()
            raise

    def _serve(self, ready: Future[None]) -> None:
        try:
            _enter_netns(self.ns_name)
        except BaseException as exc:
            ready.set_exception(exc)
            return
        ready.set_result(None)
        while (req := self._requests.get()) is not None:
            family, type_, proto, fut = req
            try:
                fut.set_result(socket.socket(family, type_, proto))
            except BaseException as exc:
                fut.set_exception(exc)

    def socket(self, family: int, type: int, proto: int = 0) -> socket.socket:
        fut: Future[socket.socket] = Future()
        # Under the lock so no request can queue up behind the stop marker and wait forever.
        with self._lock:
            if self._closed:
                raise RuntimeError(f"SocketFactory for {self.ns_name} is closed")
            self._requests.put((family, type, proto, fut))
        return fut.result()

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._requests.put(None)
        self._thread.join()

    def __enter__(self) -> SocketFactory:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class Namespace:
    """A named network namespace (``/var/run/netns/<name>``).

    Processes started through :meth:`popen` are remembered and stopped (by their PID) on
    :meth:`delete`, because a process left inside keeps the namespace and its links alive.
    """

    def __init__(self, name: str) -> None:
        self.name = _check_name(name)
        self._procs: list[subprocess.Popen[Any]] = []

    def __repr__(self) -> str:
        return f"Namespace({self.name!r})"

    @property
    def path(self) -> Path:
        return NETNS_DIR / self.name

    def exists(self) -> bool:
        return self.name in list_namespaces()

    def create(self) -> Namespace:
        check_available()
        _ip("netns", "add", self.name)
        try:
            self.ip("link", "set", "lo", "up")
        except NetnsError:
            _ip("netns", "del", self.name, check=False)
            raise
        return self

    def delete(self) -> None:
        """Stop processes we started inside, then remove the namespace. Idempotent."""
        self._stop_processes()
        _ip("netns", "del", self.name, check=False)

    def _stop_processes(self) -> None:
        for proc in self._procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self._procs:
            try:
                proc.wait(timeout=_PROCESS_GRACE_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._procs.clear()

    def ip(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run ``ip -n <name> ARGS``."""
        return _ip(*args, ns=self.name, check=check)

    def _exec_argv(self, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.name, *argv]

    def run(self, argv: Sequence[str], check: bool = True, **kw: Any) -> subprocess.CompletedProcess[Any]:
        """Run a command inside the namespace; output is captured as text unless overridden."""
        kw.setdefault("capture_output", True)
        kw.setdefault("text", True)
        kw.setdefault("timeout", 60)
        return subprocess.run(self._exec_argv(argv), check=check, **kw)

    def popen(self, argv: Sequence[str], **kw: Any) -> subprocess.Popen[Any]:
        """Start a command inside the namespace; it is stopped when the namespace is deleted."""
        proc: subprocess.Popen[Any] = subprocess.Popen(self._exec_argv(argv), **kw)
        self._procs.append(proc)
        return proc

    def open_socket(self, family: int, type: int, proto: int = 0) -> socket.socket:
        return open_socket_in(self.name, family, type, proto)

    def pids(self) -> list[int]:
        """PIDs of all processes whose network namespace this is."""
        out = _ip("netns", "pids", self.name, check=False).stdout
        return [int(tok) for tok in out.split() if tok.isdigit()]

    def link_info(self, ifname: str) -> dict[str, Any]:
        data: list[dict[str, Any]] = json.loads(self.ip("-j", "link", "show", "dev", ifname).stdout)
        return data[0]

    def set_sysctl(self, key: str, value: str) -> None:
        """Set a per-namespace sysctl such as ``net.ipv4.ip_forward``."""
        self.run(["sysctl", "-q", "-w", f"{key}={value}"])


@dataclass(frozen=True)
class Bridge:
    """A Linux bridge inside ``ns`` (STP off, forward delay 0 so ports forward at once)."""

    ns: Namespace
    name: str
    address: IPv4Interface | None = None


@dataclass(frozen=True)
class Endpoint:
    """One interface inside a namespace: a veth end attached to a bridge, or a tap."""

    ns: Namespace
    ifname: str
    mac: str
    address: IPv4Interface | None = None
    bridge: Bridge | None = None
    peer: str | None = None  # veth: the bridge-side port name, inside bridge.ns


@dataclass
class Topology:
    """Builds namespaces, bridges, veths and taps, and removes all of them on :meth:`close`.

    Namespace names are ``<prefix><role>``; interface names are short and local to their namespace.
    """

    prefix: str = field(default_factory=unique_prefix)
    namespaces: list[Namespace] = field(default_factory=list)
    _ports: itertools.count[int] = field(default_factory=itertools.count, init=False, repr=False)

    def __enter__(self) -> Topology:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def namespace(self, role: str) -> Namespace:
        """Create and track namespace ``<prefix><role>`` with ``lo`` up."""
        ns = Namespace(self.prefix + role).create()
        self.namespaces.append(ns)
        return ns

    def bridge(self, ns: Namespace, name: str = "br0", address: IPv4Interface | str | None = None) -> Bridge:
        _check_ifname(name)
        ns.ip("link", "add", name, "type", "bridge", "stp_state", "0", "forward_delay", "0")
        addr = _set_up(ns, name, address)
        return Bridge(ns=ns, name=name, address=addr)

    def attach(
        self,
        bridge: Bridge,
        ns: Namespace,
        ifname: str = "eth0",
        address: IPv4Interface | str | None = None,
        mac: str | None = None,
    ) -> Endpoint:
        """Join ``ns`` to ``bridge`` by a veth pair: ``ifname`` in ``ns``, a port on the bridge."""
        _check_ifname(ifname)
        peer = f"p{next(self._ports)}"
        args = ["link", "add", ifname]
        if mac:
            args += ["address", mac]
        ns.ip(*args, "type", "veth", "peer", "name", peer, "netns", bridge.ns.name)
        bridge.ns.ip("link", "set", peer, "master", bridge.name, "up")
        addr = _set_up(ns, ifname, address)
        return Endpoint(ns, ifname, _mac(ns, ifname), addr, bridge, peer)

    def tap(self, ns: Namespace, name: str, bridge: Bridge | None = None) -> Endpoint:
        """A persistent tap device for QEMU (``-netdev tap,ifname=NAME``), optionally bridged.

        QEMU must run inside ``ns`` (``ns.popen([...])``) to open it.
        """
        _check_ifname(name)
        ns.ip("tuntap", "add", "dev", name, "mode", "tap")
        if bridge is not None:
            if bridge.ns.name != ns.name:
                raise ValueError("a tap can only join a bridge in its own namespace")
            ns.ip("link", "set", name, "master", bridge.name)
        ns.ip("link", "set", name, "up")
        return Endpoint(ns, name, _mac(ns, name), None, bridge, None)

    def close(self) -> None:
        """Delete every namespace this topology created (links inside go with them)."""
        errors: list[str] = []
        for ns in reversed(self.namespaces):
            try:
                ns.delete()
            except Exception as exc:  # keep going: the other namespaces must go too
                errors.append(f"{ns.name}: {exc}")
        self.namespaces.clear()
        if errors:
            raise NetnsError("cleanup failed: " + "; ".join(errors))


def _check_ifname(name: str) -> None:
    if len(name) > IFNAMSIZ or not _SAFE_NAME_RE.match(name):
        raise ValueError(f"bad interface name {name!r} (at most {IFNAMSIZ} safe characters)")


def _set_up(ns: Namespace, ifname: str, address: IPv4Interface | str | None) -> IPv4Interface | None:
    addr = IPv4Interface(address) if address is not None else None
    if addr is not None:
        ns.ip("addr", "add", addr.with_prefixlen, "dev", ifname)
    ns.ip("link", "set", ifname, "up")
    return addr


def _mac(ns: Namespace, ifname: str) -> str:
    return str(ns.link_info(ifname)["address"])


def sweep(prefix: str) -> list[str]:
    """Remove namespaces and host links whose names start with ``prefix``; return what went.

    Processes still inside a swept namespace are left alone (they may not be ours); they keep the
    namespace alive until they exit, but it is no longer reachable by name.
    """
    if len(prefix) < 4 or not prefix.endswith("-") or not _SAFE_NAME_RE.match(prefix):
        raise ValueError(f"refusing to sweep with prefix {prefix!r}: expected e.g. 'bf-4711-'")
    removed: list[str] = []
    for name in list_namespaces():
        if name.startswith(prefix):
            _ip("netns", "del", name, check=False)
            removed.append(name)
    links: list[dict[str, Any]] = json.loads(_ip("-j", "link", "show").stdout or "[]")
    for link in links:
        ifname = str(link.get("ifname", ""))
        if ifname.startswith(prefix):
            _ip("link", "del", "dev", ifname, check=False)
            removed.append(ifname)
    return removed


def stale_prefixes(base: str = "bf") -> list[str]:
    """Prefixes ``<base>-<pid>-`` of namespaces whose creating process no longer exists."""
    stale: set[str] = set()
    for name in list_namespaces():
        m = _RUN_PREFIX_RE.match(name)
        if m and m["base"] == base and not _pid_alive(int(m["pid"])):
            stale.add(f"{base}-{m['pid']}-")
    return sorted(stale)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
