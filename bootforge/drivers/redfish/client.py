"""An async Redfish client for one BMC: `RedfishClient`.

API (for the power and management interfaces here, and for the redfish-virtual-media boot interface):
open a client with the node's driver_info, `async with RedfishClient.from_driver_info(node.driver_info)
as bmc:`, which reads the service root, logs in (a Redfish session, or basic auth), finds the
ComputerSystem and selects the vendor's quirks; leaving the block deletes the session (or, with
`session_idle`, keeps it for the next client of the same BMC and credentials). Then:
`power_state()`, `set_power("on"|"off"|"soft_off"|"reboot"|"soft_reboot", timeout)`, `set_boot(target,
persistent=, mode=, http_boot_uri=)` and `get_boot()`, `secure_boot()` / `set_secure_boot(bool)`,
`find_virtual_media(kind="cd")`, `insert_media(url, kind="cd")`, `eject_media(kind="cd")` and
`report()`. Every call has a deadline (driver_info redfish_timeout per request, the caller's timeout
for power waits, `task_timeout` for task monitors), waits while the BMC says it is busy (503/429 with
Retry-After) within that deadline, and fails with `RedfishError` (a DriverError) naming the BMC URL,
the resource, the HTTP status and the BMC's own message, never a credential.
"""

from __future__ import annotations

import asyncio
import email.utils
import hashlib
import json
from collections.abc import Awaitable, Callable, Mapping
from contextlib import suppress
from dataclasses import dataclass
from typing import Any, Literal, Self
from urllib.parse import urlsplit

import httpx

from bootforge.drivers.redfish import quirks as q
from bootforge.drivers.redfish.info import RedfishInfo, parse_driver_info
from bootforge.errors import DriverError

__all__ = [
    "BOOT_TARGETS",
    "MEDIA_KINDS",
    "BootState",
    "RedfishClient",
    "RedfishError",
    "SecureBootState",
    "VirtualMedia",
]

ROOT = "/redfish/v1/"
# bootforge boot device -> Redfish BootSourceOverrideTarget.
BOOT_TARGETS = {"pxe": "Pxe", "disk": "Hdd", "cdrom": "Cd", "bios": "BiosSetup", "uefi_http": "UefiHttp"}
# Virtual media kinds -> the MediaTypes that serve them.
MEDIA_KINDS = {"cd": ("CD", "DVD"), "usb": ("USBStick",), "floppy": ("Floppy",)}
BUSY_WAIT = 2.0  # when a busy BMC gives no Retry-After
# A task in one of these states is still going; any other state is final.
_TASK_RUNNING = {"New", "Starting", "Running", "Pending", "Stopping", "Suspended", "Service", "Interrupted"}
_TASK_FAILED = {"Exception", "Killed", "Cancelled", "Cancelling"}
PowerAction = Literal["on", "off", "soft_off", "reboot", "soft_reboot"]


class RedfishError(DriverError):
    """A Redfish operation failed; `status` is the HTTP status when the BMC answered."""

    def __init__(self, message: str, status: int | None = None, resource: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.resource = resource


class RedfishNoAnswer(RedfishError):
    """The BMC did not answer a request by its deadline."""


@dataclass(frozen=True)
class Resource:
    path: str
    doc: dict[str, Any]
    etag: str | None


@dataclass(frozen=True)
class VirtualMedia:
    path: str
    id: str
    media_types: tuple[str, ...]
    inserted: bool | None
    image: str | None
    insert_target: str | None  # the InsertMedia action's target, None if the BMC has no action
    eject_target: str | None
    under: Literal["systems", "managers"]


@dataclass(frozen=True)
class BootState:
    target: str | None
    enabled: str | None  # Disabled / Once / Continuous
    mode: str | None  # UEFI / Legacy
    allowed_targets: tuple[str, ...] | None
    allowed_modes: tuple[str, ...] | None
    http_boot_uri: bool  # the BMC offers HttpBootUri


@dataclass(frozen=True)
class SecureBootState:
    enabled: bool | None  # SecureBootEnable: what the next boot will do
    current: str | None  # SecureBootCurrentBoot: Enabled / Disabled, what this boot did


# Services (address, user) where auth "auto" found no usable SessionService and basic auth worked:
# later clients skip the login attempt (one request less per operation, e.g. per power sync).
_basic_works: set[tuple[str, str]] = set()


@dataclass
class _Pooled:
    """A Redfish session kept for the next client of the same BMC and credentials."""

    info: RedfishInfo
    transport: httpx.AsyncBaseTransport | None  # how the client that logged in reached the BMC
    token: str
    session_path: str | None
    root: dict[str, Any]
    idle_since: float
    users: int = 0


# (event loop, BMC address, user, password digest, CA) -> its kept session.
_pool: dict[tuple[int, str, str, str, str], _Pooled] = {}


def _pool_key(info: RedfishInfo) -> tuple[int, str, str, str, str]:
    digest = hashlib.sha256(info.password.encode()).hexdigest()
    return (id(asyncio.get_running_loop()), info.address, info.username, digest, str(info.verify_ca))


async def close_idle_sessions(older_than: float = 0.0) -> int:
    """Log out of kept sessions (of this event loop) no client is using and that have been idle for
    `older_than` seconds; returns how many. For shutdown, and for a periodic sweep."""
    loop = asyncio.get_running_loop()
    closed = 0
    for key, entry in list(_pool.items()):
        if key[0] != id(loop) or entry.users or loop.time() - entry.idle_since < older_than:
            continue
        del _pool[key]
        await _logout(entry)
        closed += 1
    return closed


async def _logout(entry: _Pooled) -> None:
    client = RedfishClient(entry.info, transport=entry.transport)
    client._token, client._session_path = entry.token, entry.session_path
    await client.close()


# Sessions bootforge holds per BMC, for BMCs with a session limit (quirks.session_limit).
_slots: dict[tuple[int, str], asyncio.Semaphore] = {}


def _slot(address: str, limit: int) -> asyncio.Semaphore:
    key = (id(asyncio.get_running_loop()), address)
    if key not in _slots:
        _slots[key] = asyncio.Semaphore(limit)
    return _slots[key]


def _odata_id(value: Any) -> str | None:
    if isinstance(value, dict) and isinstance(value.get("@odata.id"), str):
        return str(value["@odata.id"])
    return None


def _retry_after(resp: httpx.Response, default: float) -> float:
    value = resp.headers.get("Retry-After")
    if not value:
        return default
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    with suppress(TypeError, ValueError):
        when = email.utils.parsedate_to_datetime(value)
        date = email.utils.parsedate_to_datetime(
            resp.headers.get("Date") or email.utils.formatdate(usegmt=True)
        )
        return max(0.0, (when - date).total_seconds())
    return default


def bmc_message(resp: httpx.Response) -> str:
    """The BMC's own words for an error: @Message.ExtendedInfo messages, else error.message."""
    try:
        body = resp.json()
    except ValueError:
        text = resp.text.strip()
        return text[:300] if text else ""
    if not isinstance(body, dict):
        return ""
    err = body.get("error", body)
    if not isinstance(err, dict):
        return ""
    infos = [i for i in err.get("@Message.ExtendedInfo") or [] if isinstance(i, dict)]
    messages = [str(i["Message"]) for i in infos if i.get("Message")]
    if messages:
        return "; ".join(messages)
    # Some services (sushy-emulator) put only a MessageId in ExtendedInfo and the words in message.
    ids = ", ".join(str(i["MessageId"]) for i in infos if i.get("MessageId"))
    text = str(err.get("message") or "")
    return f"{text} ({ids})" if text and ids else text or ids


class RedfishClient:
    """One BMC's Redfish service. Use as an async context manager (see the module docstring)."""

    def __init__(
        self,
        info: RedfishInfo,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        poll_interval: float = 1.0,
        task_timeout: float = 300.0,
        session_idle: float = 0.0,
    ) -> None:
        self.info = info
        self.poll_interval = poll_interval
        self.task_timeout = task_timeout
        # 0: log in per client and delete the session on close. > 0: keep the session for the
        # next client of this BMC (and credentials) for up to that many idle seconds, as Ironic's
        # session cache does; a kept session the BMC dropped is replaced after its 401.
        self.session_idle = session_idle
        self._pooled: _Pooled | None = None
        self._transport = transport
        self._http = httpx.AsyncClient(
            base_url=info.address,
            verify=info.ssl_context(),
            transport=transport,
            follow_redirects=False,
            headers={"OData-Version": "4.0", "Accept": "application/json"},
        )
        self._token: str | None = None
        self._session_path: str | None = None
        self._basic = info.auth_type == "basic"
        self._root: dict[str, Any] = {}
        self._system_path: str | None = None
        self._system: Resource | None = None
        # The system document was read after the last change bootforge made (PATCH/POST/DELETE).
        self._fresh = False
        self._manager: Resource | None = None
        self._slot: asyncio.Semaphore | None = None
        self.quirks = q.DEFAULT.quirks
        # Requests sent, for tests and for the operator's event line ("3 requests").
        self.requests = 0

    @classmethod
    def from_driver_info(cls, driver_info: Mapping[str, Any], **kwargs: Any) -> RedfishClient:
        return cls(parse_driver_info(driver_info), **kwargs)

    async def __aenter__(self) -> Self:
        try:
            await self.connect()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- plumbing ---------------------------------------------------------------------------------

    def _now(self) -> float:
        return asyncio.get_running_loop().time()

    def _deadline(self) -> float:
        return self._now() + self.info.timeout

    def _where(self, path: str) -> str:
        return f"{self.info.address}{path}"

    def _error(self, method: str, path: str, resp: httpx.Response, doing: str = "") -> RedfishError:
        status = resp.status_code
        what = f"Redfish {method} {self._where(path)}" + (f" ({doing})" if doing else "")
        if status == 401:
            why = "the BMC refused the credentials (redfish_username / redfish_password)"
        else:
            why = bmc_message(resp) or resp.reason_phrase
        return RedfishError(f"{what} failed: HTTP {status}: {why}", status, path)

    def _local(self, url: str) -> str:
        """A path on this BMC from an @odata.id or Location; another host's URL is refused, so the
        credentials never travel anywhere else."""
        parts = urlsplit(url)
        if parts.scheme or parts.netloc:
            mine = urlsplit(self.info.address)
            if (parts.scheme, parts.netloc) != (mine.scheme, mine.netloc):
                raise RedfishError(f"the BMC at {self.info.address} pointed to another host: {url}")
        return parts.path + (f"?{parts.query}" if parts.query else "")

    async def _send(
        self,
        method: str,
        path: str,
        deadline: float,
        *,
        body: Any = None,
        headers: Mapping[str, str] | None = None,
        auth: bool = True,
        relogin: bool = True,
    ) -> httpx.Response:
        """One request, repeated while the BMC is busy and once after a lost session, by `deadline`."""
        relogged = not relogin
        while True:
            remaining = deadline - self._now()
            if remaining <= 0:
                raise RedfishNoAnswer(
                    f"Redfish {method} {self._where(path)}: no answer within {self.info.timeout:g} s",
                    None,
                    path,
                )
            hdrs = dict(headers or {})
            basic: httpx.Auth | None = None
            if auth and self._token:
                hdrs["X-Auth-Token"] = self._token
            elif auth and self._basic:
                basic = httpx.BasicAuth(self.info.username, self.info.password)
            if method != "GET":
                self._fresh = False
            content = None
            if body is not None:
                content = json.dumps(body).encode()
                hdrs["Content-Type"] = "application/json"
            self.requests += 1
            try:
                # httpx's own timeouts (per phase) end a stalled request cleanly; this bounds the
                # whole request, phases together, a little later.
                async with asyncio.timeout(remaining + 0.5):
                    resp = await self._http.request(
                        method, path, content=content, headers=hdrs, auth=basic, timeout=remaining
                    )
            except (TimeoutError, httpx.TimeoutException):
                raise RedfishNoAnswer(
                    f"Redfish {method} {self._where(path)}: no answer within {self.info.timeout:g} s",
                    None,
                    path,
                ) from None
            except httpx.ConnectError as e:
                raise RedfishError(
                    f"cannot connect to the BMC at {self.info.address}: {e}", None, path
                ) from None
            except httpx.TransportError as e:
                raise RedfishError(
                    f"Redfish {method} {self._where(path)}: connection failed: {type(e).__name__}: {e}",
                    None,
                    path,
                ) from None
            if resp.status_code == 401 and auth and self._token and not relogged:
                # The session expired or the BMC dropped it: log in again, once per request.
                relogged = True
                self._token = None
                await self._login(deadline)
                continue
            if self._is_busy(resp):
                wait = _retry_after(resp, BUSY_WAIT)
                if self._now() + wait >= deadline:
                    raise self._error(
                        method, path, resp, f"busy, and Retry-After {wait:g} s passes the deadline"
                    )
                await asyncio.sleep(wait)
                continue
            return resp

    def _is_busy(self, resp: httpx.Response) -> bool:
        if resp.status_code in (429, 503):
            return True
        if resp.status_code >= 400 and self.quirks.busy_messages:
            return any(m in resp.text for m in self.quirks.busy_messages)
        return False

    async def _get(self, path: str, deadline: float | None = None, *, auth: bool = True) -> Resource:
        deadline = deadline or self._deadline()
        for _ in range(4):
            resp = await self._send("GET", path, deadline, auth=auth)
            if resp.status_code in (301, 302, 307, 308) and "Location" in resp.headers:
                path = self._local(resp.headers["Location"])
                continue
            break
        if resp.status_code != 200:
            raise self._error("GET", path, resp)
        try:
            doc = resp.json()
        except ValueError:
            raise RedfishError(
                f"Redfish GET {self._where(path)}: the answer is not JSON", 200, path
            ) from None
        if not isinstance(doc, dict):
            raise RedfishError(f"Redfish GET {self._where(path)}: the answer is not a JSON object", 200, path)
        etag = resp.headers.get("ETag") or doc.get("@odata.etag")
        return Resource(str(doc.get("@odata.id") or path), doc, str(etag) if etag else None)

    async def _finish(self, resp: httpx.Response, method: str, path: str, doing: str) -> None:
        """Raise for an error answer; follow a task monitor (202 + Location) to its end."""
        if resp.status_code >= 400:
            raise self._error(method, path, resp, doing)
        if resp.status_code == 202 and resp.headers.get("Location"):
            await self._wait_task(self._local(resp.headers["Location"]), method, path, doing)

    async def _wait_task(self, monitor: str, method: str, path: str, doing: str) -> None:
        deadline = self._now() + self.task_timeout

        def overdue() -> RedfishError:
            return RedfishError(
                f"Redfish {method} {self._where(path)} ({doing}): task {monitor} still running after "
                f"{self.task_timeout:g} s",
                None,
                path,
            )

        while True:
            if self._now() >= deadline:
                raise overdue()
            try:
                resp = await self._send("GET", monitor, deadline)
            except RedfishNoAnswer:
                # The task's deadline, not the BMC's silence, is the news once it has passed.
                if self._now() >= deadline:
                    raise overdue() from None
                raise
            if resp.status_code >= 400:
                raise self._error("GET", monitor, resp, f"task monitor of {doing}")
            state = None
            body: Any = None
            with suppress(ValueError):
                body = resp.json()
            if isinstance(body, dict):
                state = body.get("TaskState")
            if isinstance(state, str) and state in _TASK_FAILED:
                messages = [
                    str(m.get("Message"))
                    for m in body.get("Messages") or []
                    if isinstance(m, dict) and m.get("Message")
                ]
                why = "; ".join(messages) or f"TaskState {state}"
                raise RedfishError(
                    f"Redfish {method} {self._where(path)} ({doing}) failed in task {monitor}: {why}",
                    None,
                    path,
                )
            if resp.status_code != 202 and not (isinstance(state, str) and state in _TASK_RUNNING):
                return
            # A BMC's "Retry-After: 0" must not turn the wait into a busy loop against it.
            wait = max(_retry_after(resp, self.poll_interval), self.poll_interval)
            if self._now() + wait >= deadline:
                raise overdue()
            await asyncio.sleep(wait)

    async def _patch(
        self,
        path: str,
        build: Callable[[Resource], dict[str, Any]],
        doing: str,
        current: Resource | None = None,
    ) -> None:
        """PATCH what `build` makes of the resource, with If-Match; after a 412 (the resource changed
        since it was read) read it again, rebuild and try once more."""
        for attempt in (1, 2):
            deadline = self._deadline()
            res = current if (attempt == 1 and current is not None) else await self._get(path, deadline)
            body = build(res)
            if not body:
                return
            etag = res.etag or ("*" if self.quirks.if_match == "required" else None)
            if attempt == 2 and etag and etag.startswith("W/"):
                # If-Match compares strongly, so a compliant BMC never matches the weak ETag it
                # handed out; some accept it anyway, the rest get the strong form (as sushy does).
                etag = etag[2:]
            headers = {"If-Match": etag} if etag else None
            resp = await self._send("PATCH", path, deadline, body=body, headers=headers)
            if resp.status_code == 412 and attempt == 1:
                continue
            await self._finish(resp, "PATCH", path, doing)
            return

    async def _post(self, target: str, body: dict[str, Any], doing: str) -> None:
        target = self._local(target)
        resp = await self._send("POST", target, self._deadline(), body=body)
        await self._finish(resp, "POST", target, doing)

    # -- connection -------------------------------------------------------------------------------

    async def connect(self) -> None:
        deadline = self._deadline()
        if self.session_idle > 0 and self.info.auth_type != "basic":
            entry = await self._take_pooled()
            if entry is not None:
                self._pooled = entry
                self._token, self._session_path, self._root = entry.token, entry.session_path, entry.root
                try:
                    await self._find_system(deadline)
                except BaseException:
                    self._leave_pool(broken=True)
                    raise
                await self._select_quirks()
                return
        try:
            self._root = (await self._get(ROOT, deadline, auth=False)).doc
        except RedfishError as e:
            if e.status != 401:
                raise
            self._root = {}  # the root should be public; this BMC wants credentials for it too
        early = q.select((self._root.get("Vendor"),), None, None)
        if early.session_limit:
            self._slot = _slot(self.info.address, early.session_limit)
            await self._wait_slot(deadline)
        remembered = (self.info.address, self.info.username)
        if self.info.auth_type == "session" or (
            self.info.auth_type == "auto" and remembered not in _basic_works
        ):
            await self._login(deadline)
        else:
            self._basic = True
        try:
            if not self._root:
                self._root = (await self._get(ROOT, deadline)).doc
            await self._find_system(deadline)
        except RedfishError as e:
            if e.status == 401:
                _basic_works.discard(remembered)
            raise
        if self._basic and self.info.auth_type == "auto":
            _basic_works.add(remembered)
        await self._select_quirks()

    async def _wait_slot(self, deadline: float) -> None:
        assert self._slot is not None
        try:
            async with asyncio.timeout(max(0.0, deadline - self._now())):
                await self._slot.acquire()
        except TimeoutError:
            self._slot = None
            raise RedfishError(
                f"no free Redfish session for {self.info.address} within {self.info.timeout:g} s "
                "(bootforge keeps within the BMC's session limit)"
            ) from None

    async def _login(self, deadline: float) -> None:
        sessions = (
            _odata_id((self._root.get("Links") or {}).get("Sessions")) or f"{ROOT}SessionService/Sessions"
        )
        resp = await self._send(
            "POST",
            sessions,
            deadline,
            body={"UserName": self.info.username, "Password": self.info.password},
            auth=False,
        )
        token = resp.headers.get("X-Auth-Token")
        if resp.status_code in (200, 201) and token:
            self._token = token
            location = resp.headers.get("Location")
            with suppress(RedfishError):
                self._session_path = self._local(location) if location else None
            return
        if self.info.auth_type == "session":
            raise self._error("POST", sessions, resp, "session login")
        # auto: no usable SessionService (absent, refused): basic auth, as the service allows.
        self._basic = True

    async def _take_pooled(self) -> _Pooled | None:
        key = _pool_key(self.info)
        entry = _pool.get(key)
        if entry is None:
            return None
        if entry.users == 0 and self._now() - entry.idle_since > self.session_idle:
            del _pool[key]
            await _logout(entry)  # idle too long: the BMC may have dropped it; start afresh
            return None
        entry.users += 1
        return entry

    def _leave_pool(self, broken: bool = False) -> None:
        """Give the session back to the pool, or (broken, or nothing to give) leave it to close()."""
        key = _pool_key(self.info)
        entry, self._pooled = self._pooled, None
        if entry is not None:
            entry.users -= 1
            if broken or not self._token:
                if _pool.get(key) is entry:
                    del _pool[key]  # nobody else picks it up
                if entry.users > 0:
                    self._token = self._session_path = None  # still in use: not ours to delete
                return
            # A re-login during this client's work may have replaced the session: keep the live one.
            entry.token, entry.session_path = self._token, self._session_path
            entry.idle_since = self._now()
            self._token = self._session_path = None
            return
        if broken or not self._token or not self._root or key in _pool:
            return
        _pool[key] = _Pooled(
            self.info, self._transport, self._token, self._session_path, self._root, self._now()
        )
        self._token = self._session_path = None

    async def close(self) -> None:
        """Keep the session for the next client (session_idle > 0) or delete it, and close the
        connections; never raises."""
        try:
            if self.session_idle > 0 and self._token is not None and self._system_path is not None:
                self._leave_pool()
            elif self._pooled is not None:
                self._leave_pool(broken=True)
            if self._session_path and self._token:
                deadline = self._now() + min(self.info.timeout, 5.0)
                with suppress(RedfishError):
                    # No new login if the BMC already dropped the session: that one would leak.
                    await self._send("DELETE", self._session_path, deadline, relogin=False)
        finally:
            self._token = None
            self._session_path = None
            await self._http.aclose()
            if self._slot is not None:
                self._slot.release()
                self._slot = None

    async def _find_system(self, deadline: float) -> None:
        if self.info.system_id:
            self._system = await self._get(self.info.system_id, deadline)
            self._system_path = self._system.path
            self._fresh = True
            return
        collection = _odata_id(self._root.get("Systems")) or f"{ROOT}Systems"
        members = [m for m in ((await self._get(collection, deadline)).doc.get("Members") or [])]
        paths = [p for p in (_odata_id(m) for m in members) if p]
        if len(paths) != 1:
            listed = ", ".join(paths) or "none"
            raise RedfishError(
                f"the BMC at {self.info.address} has {len(paths)} systems ({listed}); "
                "set redfish_system_id to the one to drive",
                None,
                collection,
            )
        self._system_path = paths[0]
        self._system = await self._get(paths[0], deadline)
        self._fresh = True

    async def _select_quirks(self) -> None:
        doc = self.system_doc
        names = (doc.get("Manufacturer"), self._root.get("Vendor"))
        model = doc.get("Model")
        firmware = None
        if q.needs_firmware(names, model):
            manager = await self.manager()
            firmware = manager.doc.get("FirmwareVersion") if manager else None
        self.quirks = q.select(names, model, firmware)

    @property
    def system_path(self) -> str:
        if self._system_path is None:
            raise RuntimeError("RedfishClient used before connect()")
        return self._system_path

    @property
    def system_doc(self) -> dict[str, Any]:
        """The ComputerSystem as last read."""
        return self._system.doc if self._system else {}

    async def system(self, refresh: bool = True) -> Resource:
        """The ComputerSystem, read again unless `refresh` is False and nothing changed since the
        last read (a power read right after connect costs no second request)."""
        if refresh or not self._fresh or self._system is None:
            self._system = await self._get(self.system_path)
            self._fresh = True
        return self._system

    async def manager(self) -> Resource | None:
        """The Manager (BMC) of the system: Links.ManagedBy, else the only/first of Managers."""
        if self._manager is not None:
            return self._manager
        links = self.system_doc.get("Links") or {}
        path = next((p for p in (_odata_id(m) for m in links.get("ManagedBy") or []) if p), None)
        if path is None and _odata_id(self._root.get("Managers")):
            coll = await self._get(str(_odata_id(self._root.get("Managers"))))
            path = next((p for p in (_odata_id(m) for m in coll.doc.get("Members") or []) if p), None)
        if path is None:
            return None
        self._manager = await self._get(path)
        return self._manager

    # -- power ------------------------------------------------------------------------------------

    async def power_state(self, refresh: bool = False) -> str | None:
        """PowerState as the BMC says it: On, Off, PoweringOn, PoweringOff (None: not reported).
        Without `refresh`, the system as read at connect (or since) serves if nothing changed."""
        state = (await self.system(refresh)).doc.get("PowerState")
        return str(state) if state is not None else None

    async def reset_types(self) -> tuple[str, ...] | None:
        """The ResetType values the BMC advertises, or None when it does not say."""
        action = (self.system_doc.get("Actions") or {}).get("#ComputerSystem.Reset") or {}
        allowed = action.get("ResetType@Redfish.AllowableValues")
        if isinstance(allowed, list):
            return tuple(str(v) for v in allowed)
        info_path = action.get("@Redfish.ActionInfo")
        if isinstance(info_path, str):
            info = await self._get(self._local(info_path))
            for param in info.doc.get("Parameters") or []:
                if isinstance(param, dict) and param.get("Name") == "ResetType":
                    values = param.get("AllowableValues")
                    if isinstance(values, list):
                        return tuple(str(v) for v in values)
        return None

    async def _pick_reset(self, action: str) -> str | None:
        wanted = self.quirks.resets.get(action, ())
        allowed = await self.reset_types()
        if allowed is None:
            return wanted[0] if wanted else None
        return next((t for t in wanted if t in allowed), None)

    async def reset(self, reset_type: str) -> None:
        action = (self.system_doc.get("Actions") or {}).get("#ComputerSystem.Reset") or {}
        target = action.get("target") or f"{self.system_path}/Actions/ComputerSystem.Reset"
        await self._post(self._local(str(target)), {"ResetType": reset_type}, f"ResetType {reset_type}")

    async def _reset_for(self, action: str) -> str:
        reset_type = await self._pick_reset(action)
        if reset_type is None:
            offered = ", ".join(await self.reset_types() or ())
            wanted = ", ".join(self.quirks.resets.get(action, ()))
            raise RedfishError(
                f"the BMC at {self.info.address} offers none of the reset types for "
                f"{action.replace('_', ' ')} ({wanted}); it offers: {offered}",
                None,
                self.system_path,
            )
        await self.reset(reset_type)
        return reset_type

    async def wait_power(self, target: str, timeout: float) -> bool:
        """Poll PowerState until it is `target`; False if it is not within `timeout` seconds."""
        deadline = self._now() + timeout
        while True:
            if await self.power_state(refresh=True) == target:
                return True
            if self._now() + self.poll_interval > deadline:
                return False
            await asyncio.sleep(self.poll_interval)

    async def set_power(self, action: PowerAction, timeout: float) -> list[str]:
        """Do a power action and wait until PowerState shows it. Returns notes for the node's
        timeline (the reset types used, a graceful shutdown that needed a hard one)."""
        wait = timeout * self.quirks.power_wait_factor
        notes: list[str] = []
        state = await self.power_state()
        if action in ("reboot", "soft_reboot") and state == "Off":
            action = "on"
        if action == "on":
            if state != "On":
                notes.append(await self._reset_for("on"))
                await self._expect_power("On", wait, notes)
        elif action == "off":
            if state != "Off":
                notes.append(await self._reset_for("off"))
                await self._expect_power("Off", wait, notes)
        elif action == "soft_off":
            if state != "Off":
                await self._soft_off(wait, notes)
        elif action == "reboot":
            reset_type = await self._pick_reset("reboot")
            if reset_type:
                await self.reset(reset_type)
                notes.append(reset_type)
            else:
                notes.append(await self._reset_for("off"))
                await self._expect_power("Off", wait, notes)
                notes.append(await self._reset_for("on"))
            await self._expect_power("On", wait, notes)
        elif action == "soft_reboot":
            reset_type = await self._pick_reset("soft_reboot")
            if reset_type:
                await self.reset(reset_type)
                notes.append(reset_type)
            else:
                await self._soft_off(wait, notes)
                notes.append(await self._reset_for("on"))
            await self._expect_power("On", wait, notes)
        else:
            raise ValueError(f"unknown power action {action!r}")
        return notes

    async def _soft_off(self, wait: float, notes: list[str]) -> None:
        notes.append(await self._reset_for("soft_off"))
        if await self.wait_power("Off", wait):
            return
        notes.append(f"still on {wait:g} s after {notes[-1]}: forced off")
        notes.append(await self._reset_for("off"))
        await self._expect_power("Off", wait, notes)

    async def _expect_power(self, target: str, wait: float, notes: list[str]) -> None:
        if not await self.wait_power(target, wait):
            raise RedfishError(
                f"the BMC at {self.info.address} accepted {notes[-1]}, but PowerState of "
                f"{self.system_path} is {self.system_doc.get('PowerState')!s}, not {target}, "
                f"after {wait:g} s",
                None,
                self.system_path,
            )

    # -- boot -------------------------------------------------------------------------------------

    def boot_state(self, doc: Mapping[str, Any] | None = None) -> BootState:
        boot = (doc if doc is not None else self.system_doc).get("Boot") or {}

        def allowed(key: str) -> tuple[str, ...] | None:
            values = boot.get(f"{key}@Redfish.AllowableValues")
            return tuple(str(v) for v in values) if isinstance(values, list) else None

        return BootState(
            target=boot.get("BootSourceOverrideTarget"),
            enabled=boot.get("BootSourceOverrideEnabled"),
            mode=boot.get("BootSourceOverrideMode"),
            allowed_targets=allowed("BootSourceOverrideTarget"),
            allowed_modes=allowed("BootSourceOverrideMode"),
            http_boot_uri="HttpBootUri" in boot,
        )

    async def get_boot(self) -> BootState:
        return self.boot_state((await self.system()).doc)

    async def set_boot(
        self,
        target: str | None = None,
        *,
        persistent: bool | None = None,
        mode: str | None = None,
        http_boot_uri: str | None = None,
    ) -> None:
        """Set the boot source override: `target` a BootSourceOverrideTarget (Pxe, Hdd, Cd, BiosSetup,
        UefiHttp), `persistent` Continuous or Once, `mode` UEFI or Legacy. Values the BMC does not
        advertise are refused before anything is sent."""
        current = await self.system()
        state = self.boot_state(current.doc)
        quirks = self.quirks
        where = f"the BMC at {self.info.address}"
        if target == "Cd" and state.allowed_targets and quirks.cdrom_target in state.allowed_targets:
            target = quirks.cdrom_target
        if target is not None and state.allowed_targets is not None and target not in state.allowed_targets:
            raise RedfishError(
                f"{where} does not offer boot target {target} for {self.system_path}; it offers: "
                f"{', '.join(state.allowed_targets)}",
                None,
                self.system_path,
            )
        if mode is not None:
            if state.mode is None and state.allowed_modes is None:
                raise RedfishError(f"{where} has no BootSourceOverrideMode: it cannot switch UEFI/Legacy")
            if state.allowed_modes is not None and mode not in state.allowed_modes:
                raise RedfishError(
                    f"{where} does not offer boot mode {mode}; it offers: {', '.join(state.allowed_modes)}"
                )
            if not quirks.boot_mode_writable and mode != state.mode:
                raise RedfishError(
                    f"{where} ({quirks.name}) does not let Redfish change the boot mode from {state.mode} to "
                    f"{mode}; change it in the firmware setup"
                )
        if http_boot_uri is not None and not (target == "UefiHttp" and state.http_boot_uri):
            raise RedfishError(
                f"{where} offers no HttpBootUri for {self.system_path} (or the target is not UefiHttp)"
            )
        enabled = None if persistent is None else ("Continuous" if persistent else "Once")
        settings = _odata_id((current.doc.get("@Redfish.Settings") or {}).get("SettingsObject"))
        path = self._local(settings) if quirks.boot_settings_object and settings else self.system_path
        first = current if path == self.system_path else None

        if mode is not None and quirks.boot_mode_separate and target is not None:

            def mode_only(res: Resource) -> dict[str, Any]:
                boot = res.doc.get("Boot") or {}
                return (
                    {"Boot": {"BootSourceOverrideMode": mode}}
                    if boot.get("BootSourceOverrideMode") != mode
                    else {}
                )

            await self._patch(path, mode_only, f"BootSourceOverrideMode {mode}", first)
            first = None
            mode_in_body = None
        else:
            mode_in_body = mode

        def build(res: Resource) -> dict[str, Any]:
            boot = res.doc.get("Boot") or {}
            body: dict[str, Any] = {}
            if target is not None:
                body["BootSourceOverrideTarget"] = target
            if enabled is not None and (
                quirks.boot_send_enabled == "always" or boot.get("BootSourceOverrideEnabled") != enabled
            ):
                body["BootSourceOverrideEnabled"] = enabled
            if mode_in_body is not None and (
                mode_in_body != boot.get("BootSourceOverrideMode") or quirks.boot_send_mode
            ):
                body["BootSourceOverrideMode"] = mode_in_body
            elif quirks.boot_send_mode and target is not None and boot.get("BootSourceOverrideMode"):
                body["BootSourceOverrideMode"] = boot["BootSourceOverrideMode"]
            if http_boot_uri is not None:
                body["HttpBootUri"] = http_boot_uri
            return {"Boot": body} if body else {}

        doing = ", ".join(
            f"{k} {v}" for k, v in (("target", target), ("enabled", enabled), ("mode", mode)) if v
        )
        await self._patch(path, build, f"boot override {doing}", first)
        if path != self.system_path:
            return  # a future-state object applies at the next boot; the system still shows the old value
        after = self.boot_state((await self.system()).doc)
        # Some BMCs answer 2xx and keep the old value (bmc-toolbox/bmclib#459): check what stuck.
        if (
            mode is not None
            and after.mode is not None
            and after.mode != mode
            and not quirks.boot_mode_at_next_boot
        ):
            raise RedfishError(
                f"{where} accepted boot mode {mode} but reads back {after.mode}", None, self.system_path
            )
        if (
            target is not None
            and target != "UefiHttp"
            and after.target is not None
            and after.target != target
        ):
            raise RedfishError(
                f"{where} accepted boot target {target} but reads back {after.target}", None, self.system_path
            )

    # -- Secure Boot ------------------------------------------------------------------------------

    def _secure_boot_path(self) -> str | None:
        path = _odata_id(self.system_doc.get("SecureBoot"))
        return self._local(path) if path else None

    async def secure_boot(self) -> SecureBootState | None:
        """The SecureBoot resource's state, or None when the system has none."""
        path = self._secure_boot_path()
        if path is None:
            return None
        doc = (await self._get(path)).doc
        enabled = doc.get("SecureBootEnable")
        current = doc.get("SecureBootCurrentBoot")
        return SecureBootState(
            enabled if isinstance(enabled, bool) else None, str(current) if current else None
        )

    async def set_secure_boot(self, enabled: bool) -> None:
        path = self._secure_boot_path()
        if path is None:
            raise RedfishError(
                f"the BMC at {self.info.address} has no SecureBoot resource for {self.system_path}",
                None,
                self.system_path,
            )
        await self._patch(
            path,
            lambda res: {} if res.doc.get("SecureBootEnable") is enabled else {"SecureBootEnable": enabled},
            f"SecureBootEnable {enabled}",
        )

    # -- virtual media ----------------------------------------------------------------------------

    async def virtual_media(self) -> list[VirtualMedia]:
        """Every virtual media device, from the system's and the manager's collections (the quirks'
        order first); a device listed in both is listed once."""
        found: dict[str, VirtualMedia] = {}

        async def from_system() -> tuple[str | None, Literal["systems", "managers"]]:
            return _odata_id(self.system_doc.get("VirtualMedia")), "systems"

        async def from_manager() -> tuple[str | None, Literal["systems", "managers"]]:
            manager = await self.manager()
            return (_odata_id(manager.doc.get("VirtualMedia")) if manager else None), "managers"

        sources: list[Callable[[], Awaitable[tuple[str | None, Literal["systems", "managers"]]]]] = [
            from_system,
            from_manager,
        ]
        if self.quirks.vmedia_first == "managers":
            sources.reverse()
        seen: set[str] = set()
        for source in sources:
            collection, under = await source()
            if not collection or collection in seen:
                continue
            seen.add(collection)
            coll = await self._get(self._local(collection))
            for member in coll.doc.get("Members") or []:
                path = _odata_id(member)
                if path and path not in found:
                    found[path] = _media(await self._get(self._local(path)), under)
        return list(found.values())

    async def find_virtual_media(self, kind: str = "cd") -> VirtualMedia:
        """The first virtual media device serving `kind` ("cd", "usb", "floppy")."""
        types = MEDIA_KINDS.get(kind)
        if types is None:
            raise ValueError(f"unknown virtual media kind {kind!r}; known: {', '.join(MEDIA_KINDS)}")
        devices = await self.virtual_media()
        for vm in devices:
            if any(t in vm.media_types for t in types):
                return vm
        offered = ", ".join(f"{vm.id} ({'/'.join(vm.media_types) or 'no MediaTypes'})" for vm in devices)
        raise RedfishError(
            f"the BMC at {self.info.address} has no {kind} virtual media device; it has: {offered or 'none'}",
            None,
            self.system_path,
        )

    async def insert_media(self, url: str, kind: str = "cd") -> VirtualMedia:
        """Attach the image at `url` (the BMC fetches it) to the `kind` device; replaces other media."""
        vm = await self.find_virtual_media(kind)
        if vm.inserted and vm.image == url:
            return vm
        if vm.inserted or vm.image:
            await self._eject(vm)
        quirks = self.quirks
        doing = f"InsertMedia {url}"
        if quirks.insert_method == "patch" or vm.insert_target is None:
            await self._patch(
                vm.path, lambda res: {"Image": url, "Inserted": True, "WriteProtected": True}, doing
            )
        else:
            body: dict[str, Any] = {"Image": url}
            if "Inserted" in quirks.insert_fields:
                body["Inserted"] = True
            if "WriteProtected" in quirks.insert_fields:
                body["WriteProtected"] = True
            if quirks.insert_transfer_protocol:
                body["TransferProtocolType"] = "HTTPS" if url.lower().startswith("https:") else "HTTP"
            await self._post(vm.insert_target, body, doing)
        after = _media(await self._get(vm.path), vm.under)
        if after.inserted is False:
            raise RedfishError(
                f"the BMC at {self.info.address} accepted InsertMedia of {url} but {vm.path} "
                "reports Inserted=false",
                None,
                vm.path,
            )
        return after

    async def eject_media(self, kind: str = "cd") -> bool:
        """Detach whatever the `kind` device holds; False when it held nothing."""
        vm = await self.find_virtual_media(kind)
        if not vm.inserted and not vm.image:
            return False
        await self._eject(vm)
        return True

    async def _eject(self, vm: VirtualMedia) -> None:
        if self.quirks.insert_method == "patch" or vm.eject_target is None:
            await self._patch(vm.path, lambda res: {"Image": None, "Inserted": False}, "EjectMedia")
        else:
            # An empty object rather than no body: iLO refuses a body-less action POST.
            await self._post(vm.eject_target, {}, "EjectMedia")

    # -- report -----------------------------------------------------------------------------------

    async def report(self) -> dict[str, Any]:
        """What the BMC offers, for `bootforge node bmc` and validate: read only."""
        doc = (await self.system()).doc
        manager = await self.manager()
        boot = self.boot_state(doc)
        modes = boot.allowed_modes or (("UEFI", "Legacy") if boot.mode is not None else ())
        if not self.quirks.boot_mode_writable:
            modes = (boot.mode,) if boot.mode else ()  # the one it is in: Redfish cannot switch it
        media: list[str] = []
        with suppress(RedfishError):
            for vm in await self.virtual_media():
                for kind, types in MEDIA_KINDS.items():
                    if kind not in media and any(t in vm.media_types for t in types):
                        media.append(kind)
        secure = None
        with suppress(RedfishError):
            secure = await self.secure_boot()
        return {
            "vendor": doc.get("Manufacturer") or self._root.get("Vendor"),
            "model": doc.get("Model"),
            "firmware": manager.doc.get("FirmwareVersion") if manager else None,
            "power_state": doc.get("PowerState"),
            "boot_targets": list(boot.allowed_targets) if boot.allowed_targets is not None else None,
            "boot_modes": list(modes),
            "http_boot_uri": boot.http_boot_uri,
            "virtual_media": media,
            "secure_boot": secure,
            "reset_types": list(await self.reset_types() or ()),
            "redfish_version": self._root.get("RedfishVersion"),
            "auth": "session" if self._token else "basic",
            "quirks": self.quirks.name,
            "system": self.system_path,
        }


def _media(res: Resource, under: Literal["systems", "managers"]) -> VirtualMedia:
    doc = res.doc
    actions = doc.get("Actions") or {}
    insert = (actions.get("#VirtualMedia.InsertMedia") or {}).get("target")
    eject = (actions.get("#VirtualMedia.EjectMedia") or {}).get("target")
    inserted = doc.get("Inserted")
    image = doc.get("Image")
    return VirtualMedia(
        path=res.path,
        id=str(doc.get("Id") or res.path.rsplit("/", 1)[-1]),
        media_types=tuple(str(t) for t in doc.get("MediaTypes") or ()),
        inserted=inserted if isinstance(inserted, bool) else None,
        image=str(image) if image else None,
        insert_target=str(insert) if insert else None,
        eject_target=str(eject) if eject else None,
        under=under,
    )
