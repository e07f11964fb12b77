"""The dashboard's routes under /ui/: login, the fleet, a node, its live streams and its actions.

Each handler checks the session first (`_session`): without a valid cookie a page redirects to the
login form (an event stream or fragment answers 401), and every POST's CSRF token is checked against
the session before anything else is read from the form. Errors from the services come back on the
page they were asked from, as the message a user reads (they never carry secrets: bootforge/errors.py).
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import functools
import json
import logging
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode

import orjson
from fastapi import APIRouter, Request
from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.responses import FileResponse, HTMLResponse, RedirectResponse, Response, StreamingResponse

from bootforge import masking
from bootforge.api.auth import Htpasswd, TooManyFailures, loopback_host
from bootforge.api.deps import Services
from bootforge.api.routes import diagnosis as diagnosis_route
from bootforge.api.routes.events import SSE_HEADERS, _gate, _stopping
from bootforge.conductor import fleet, reads, states
from bootforge.conductor.task import load_node
from bootforge.drivers import qemu, qemu_machine
from bootforge.drivers.base import BOOT_DEVICES, console_log_path
from bootforge.errors import BootforgeError, InvalidInput, NotAuthorized, NotFound
from bootforge.observe import streams
from bootforge.observe.settings import EVENT_KINDS
from bootforge.text import printable
from bootforge.web.session import COOKIE, Session, Sessions

log = logging.getLogger("bootforge.web")

router = APIRouter(prefix="/ui", include_in_schema=False)

PAGE_SIZE = 50
TIMELINE_HISTORY = 300  # timeline rows a node page starts with
CONSOLE_START = 16 * 1024  # bytes of the console log's end a node page starts with
CONSOLE_CHUNK = 64 * 1024  # bytes sent per console message at most
CONSOLE_POLL = 0.5  # seconds between looks at the console log's size
MAX_FORM = 256 * 1024  # bytes of a form (user data is the big field)
STATIC = Path(__file__).parent / "static"
STATIC_FILES = {"dashboard.js": "text/javascript", "style.css": "text/css"}

# Pages say where they may load from: only here. No inline script or style anywhere.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}

# What the node page offers, per provisioning verb: (label, the confirmation question).
VERBS = {
    "manage": ("Manage", "Move the node to manageable (verifies its BMC)?"),
    "provide": ("Provide", "Clean the node and make it available?"),
    "inspect": ("Inspect", "Boot the node into the ramdisk to inspect its hardware?"),
    "deploy": ("Deploy", "Deploy the chosen image to the node? Its disk is overwritten."),
    "undeploy": ("Undeploy", "Undeploy the node? Its instance is destroyed and the disk cleaned."),
    "abort": ("Abort", "Abort what the node is doing now?"),
}
POWER = {
    "power on": ("Power on", "Power the node on?"),
    "power off": ("Power off", "Power the node off (hard)?"),
    "rebooting": ("Reboot", "Reboot the node (hard)?"),
}

_env = Environment(
    loader=PackageLoader("bootforge.web", "templates"),
    autoescape=select_autoescape(default=True, default_for_string=True),
    trim_blocks=True,
    lstrip_blocks=True,
)


def _when(value: Any) -> str:
    if isinstance(value, dt.datetime):
        when = value if value.tzinfo else value.replace(tzinfo=dt.UTC)
        return when.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return "" if value is None else str(value)


def _pretty(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, default=str)


_env.filters["when"] = _when
_env.filters["pretty"] = _pretty


class _Forbidden(Exception):
    """A POST whose CSRF token is missing or not its session's: answered 403 by _guard."""


class _WrongHost(Exception):
    """noauth and a Host that is no loopback name: answered 403 by _guard.

    noauth listens on loopback only, but a web page the operator opens can point a name of its own at
    127.0.0.1 (DNS rebinding) and then read the dashboard as its own origin, CSRF token included.
    The browser sends that name as Host, so a noauth dashboard answers only to loopback names.
    """


class _Redirect(Exception):
    def __init__(self, response: Response) -> None:
        self.response = response


def _sessions(request: Request) -> Sessions:
    found: Sessions = request.app.state.web_sessions
    return found


def _htpasswd(request: Request) -> Htpasswd | None:
    found: Htpasswd | None = request.app.state.web_htpasswd
    return found


def _services(request: Request) -> Services:
    found: Services = request.app.state.services
    return found


def _secure_cookie(request: Request) -> bool:
    return request.url.scheme == "https"


def _set_cookie(request: Request, response: Response, session: Session) -> None:
    sessions = _sessions(request)
    response.set_cookie(
        COOKIE,
        sessions.encode(session),
        max_age=int(sessions.ttl),
        path="/ui",
        httponly=True,
        samesite="strict",
        secure=_secure_cookie(request),
    )


def _session(request: Request, *, page: bool = True) -> tuple[Session, bool]:
    """The request's logged-in session and whether it is new (its cookie must be set).

    Without one: noauth mode starts one (no login there), otherwise a page redirects to the login
    form and anything else (fragments, streams, POSTs) is refused with 401.
    """
    sessions = _sessions(request)
    noauth = _htpasswd(request) is None
    if noauth and not loopback_host(request.url.hostname):
        raise _WrongHost()
    found = sessions.decode(request.cookies.get(COOKIE))
    # With auth, only a session a login made names a user: a noauth session's "" (issued before the
    # server was switched to http_basic, under the same key) is no login.
    if found is not None and (found.user if not noauth else found.logged_in):
        return found, False
    if noauth:
        return sessions.new(""), True
    if page:
        raise _Redirect(RedirectResponse("/ui/login", status_code=303))
    raise NotAuthorized("Log in to the dashboard first.")


def _render(
    request: Request,
    template: str,
    session: Session | None,
    new: bool = False,
    status: int = 200,
    **values: Any,
) -> HTMLResponse:
    csrf = _sessions(request).csrf(session) if session else ""
    auth = _htpasswd(request) is not None
    body = _env.get_template(template).render(session=session, csrf=csrf, auth=auth, **values)
    response = HTMLResponse(body, status_code=status, headers=SECURITY_HEADERS)
    if session is not None and new:
        _set_cookie(request, response, session)
    return response


async def _form(request: Request) -> dict[str, str]:
    """An urlencoded form's fields (the first value of each), bounded in size and count."""
    raw = await request.body()
    if len(raw) > MAX_FORM:
        raise InvalidInput(f"The form is larger than {MAX_FORM} bytes", "body")
    fields = parse_qs(raw.decode("utf-8", "replace"), keep_blank_values=True, max_num_fields=32)
    return {k: v[0] for k, v in fields.items()}


def _checked(request: Request, form: dict[str, str]) -> Session:
    """The session of a POST whose CSRF token matches it; _Forbidden (403) otherwise, NotAuthorized
    (401) without a logged-in session."""
    session, _new = _session(request, page=False)
    if _new or not _sessions(request).check_csrf(session, form.get("csrf")):
        raise _Forbidden()
    return session


def _forbidden() -> HTMLResponse:
    return HTMLResponse(
        "<!doctype html><title>Refused</title><p>The form's CSRF token does not match this session: "
        'reload the page and try again. <a href="/ui/">Dashboard</a>',
        status_code=403,
        headers=SECURITY_HEADERS,
    )


def _guard(handler: Callable[..., Any]) -> Callable[..., Any]:
    """Turn the session checks' exceptions into answers (a redirect, 401 or 403)."""

    @functools.wraps(handler)
    async def wrapper(*args: Any, **kwargs: Any) -> Response:
        try:
            response: Response = await handler(*args, **kwargs)
            return response
        except _Redirect as r:
            return r.response
        except _Forbidden:
            return _forbidden()
        except _WrongHost:
            return Response(
                "Without authentication (auth_strategy noauth) the dashboard answers only to a loopback "
                "host name (127.0.0.1, [::1], localhost).",
                status_code=403,
                media_type="text/plain",
            )
        except NotAuthorized as exc:
            return Response(exc.message, status_code=401, media_type="text/plain")

    return wrapper


# --- static assets ------------------------------------------------------------------------------------


@router.get("/static/{name}")
async def static(name: str) -> Response:
    kind = STATIC_FILES.get(name)
    if kind is None:
        raise NotFound(f"No such dashboard asset: {printable(name, 64)}")
    return FileResponse(STATIC / name, media_type=kind, headers={"Cache-Control": "max-age=300"})


# --- login --------------------------------------------------------------------------------------------


@router.get("/login")
@_guard
async def login_form(request: Request) -> Response:
    if _htpasswd(request) is None:
        return RedirectResponse("/ui/", status_code=303)
    session = _sessions(request).new(None)
    return _render(request, "login.html", session, new=True)


@router.post("/login")
@_guard
async def login(request: Request) -> Response:
    htpasswd = _htpasswd(request)
    if htpasswd is None:
        return RedirectResponse("/ui/", status_code=303)
    sessions = _sessions(request)
    form = await _form(request)
    pre = sessions.decode(request.cookies.get(COOKIE))
    if pre is None or not sessions.check_csrf(pre, form.get("csrf")):
        return _forbidden()
    user, password = form.get("user", ""), form.get("password", "")
    basic = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
    client = request.client.host if request.client else ""
    try:
        checked = await htpasswd.authenticate(basic, client)
    except (NotAuthorized, TooManyFailures) as exc:
        status = 429 if isinstance(exc, TooManyFailures) else 401
        return _render(request, "login.html", pre, status=status, error=exc.message, user=user)
    # A new nonce: the form's token (seen before the login) is not this session's token.
    session = sessions.new(checked)
    response = RedirectResponse("/ui/", status_code=303)
    _set_cookie(request, response, session)
    return response


@router.post("/logout")
@_guard
async def logout(request: Request) -> Response:
    _checked(request, await _form(request))
    response = RedirectResponse("/ui/login", status_code=303)
    response.delete_cookie(COOKIE, path="/ui", httponly=True, samesite="strict")
    return response


# --- fleet --------------------------------------------------------------------------------------------


def _fleet_query(request: Request) -> tuple[fleet.FleetFilter, int, dict[str, str]]:
    p = request.query_params
    maintenance = {"true": True, "false": False}.get(p.get("maintenance", ""))
    f = fleet.FleetFilter(
        provision_state=p.get("provision_state", "")[:32],
        maintenance=maintenance,
        driver=p.get("driver", "")[:64],
        resource_class=p.get("resource_class", "")[:80],
        search=p.get("q", "")[: fleet.MAX_SEARCH],
    )
    try:
        page = max(1, min(int(p.get("page", "1")), 100_000))
    except ValueError:
        page = 1
    shown = {
        "provision_state": f.provision_state,
        "maintenance": p.get("maintenance", "") if maintenance is not None else "",
        "driver": f.driver,
        "resource_class": f.resource_class,
        "q": f.search,
    }
    return f, page, {k: v for k, v in shown.items() if v}


def _fleet_values(found: fleet.FleetPage, page: int, query: dict[str, str]) -> dict[str, Any]:
    def link(n: int) -> str:
        return "/ui/?" + urlencode({**query, "page": str(n)})

    for row in found.rows:
        row["conductor"] = row["reservation"] or row["conductor_affinity"] or ""
    return {
        "rows": found.rows,
        "total": found.total,
        "page": page,
        "first": (page - 1) * PAGE_SIZE + 1 if found.rows else 0,
        "last": (page - 1) * PAGE_SIZE + len(found.rows),
        "prev": link(page - 1) if page > 1 else None,
        "next": link(page + 1) if found.has_next else None,
        "rows_src": "/ui/fleet/rows?" + urlencode({**query, "page": str(page)}),
    }


@router.get("/")
@_guard
async def fleet_view(request: Request) -> Response:
    session, new = _session(request)
    f, page, query = _fleet_query(request)
    found = await fleet.fleet_page(_services(request).conductor.db, f, page, PAGE_SIZE)
    return _render(
        request,
        "fleet.html",
        session,
        new,
        query=query,
        states=sorted({*states.STABLE_STATES, *states.FAILED_STATES, *states.WAIT_STATES, *states.TARGETS}),
        **_fleet_values(found, page, query),
    )


@router.get("")
async def fleet_redirect() -> Response:
    return RedirectResponse("/ui/", status_code=307)


@router.get("/fleet/rows")
@_guard
async def fleet_rows(request: Request) -> Response:
    """The fleet table's rows alone, for the live refresh."""
    session, _new = _session(request, page=False)
    f, page, query = _fleet_query(request)
    found = await fleet.fleet_page(_services(request).conductor.db, f, page, PAGE_SIZE)
    return _render(request, "fleet_rows.html", session, **_fleet_values(found, page, query))


@router.get("/events")
@_guard
async def fleet_events(request: Request) -> Response:
    """The CloudEvents stream of /v1/events/stream, for the fleet view's refresh (session auth)."""
    _session(request, page=False)
    services = _services(request)
    observer = services.conductor.observer
    gate = _gate(request)
    stopping = _stopping(request)
    keepalive = services.settings.events.stream_keepalive

    async def body() -> AsyncIterator[bytes]:
        with gate.enter(), observer.hub.subscribe(None, EVENT_KINDS) as sub:
            async for chunk in streams.cloudevents(sub, keepalive, stopping):
                yield chunk

    gate.check()
    return StreamingResponse(body(), media_type="text/event-stream", headers=SSE_HEADERS)


# --- a node -------------------------------------------------------------------------------------------


async def _diagnosis(request: Request, ident: str) -> dict[str, Any] | None:
    """The API's diagnosis of the node (GET /v1/nodes/{ident}/diagnosis), as that route answers it."""
    try:
        answer = await diagnosis_route.diagnose(request, ident)
    except BootforgeError as exc:
        log.warning("diagnosis of %s failed: %s", printable(ident, 64), exc.message)
        return None
    found: dict[str, Any] = orjson.loads(bytes(answer.body))
    return found


async def _progress(request: Request, ident: str) -> dict[str, Any] | None:
    """The API's progress of the node (GET /v1/nodes/{ident}/progress): the step, the agent's done/total."""
    try:
        answer = await diagnosis_route.progress(request, ident)
    except BootforgeError:
        return None
    found: dict[str, Any] = orjson.loads(bytes(answer.body))
    return found


async def _summary_values(request: Request, ident: str) -> dict[str, Any]:
    services = _services(request)
    node = await load_node(services.conductor, ident)
    verbs = [v for v in states.allowed_verbs(node.provision_state) if v in VERBS]
    images = getattr(request.app.state, "images", None)
    return {
        "node": node,
        "ident": node.uuid,
        "diagnosis": await _diagnosis(request, node.uuid),
        "progress": await _progress(request, node.uuid),
        "verbs": [(v, *VERBS[v]) for v in verbs],
        "power": POWER,
        "boot_devices": BOOT_DEVICES,
        "images": (await images.list()) if images is not None and "deploy" in verbs else [],
    }


@router.get("/nodes/{ident}")
@_guard
async def node_page(request: Request, ident: str) -> Response:
    session, new = _session(request)
    services = _services(request)
    try:
        values = await _summary_values(request, ident)
    except NotFound as exc:
        return _render(request, "missing.html", session, new, status=404, message=exc.message)
    node = values["node"]
    inventory = await reads.inventory(services.conductor.db, node.id)
    ports = await fleet.node_ports(services.conductor.db, node.id)
    fields = {
        name: masking.mask_node_field(name, getattr(node, name))
        for name in ("driver_info", "properties", "instance_info", "extra")
    }
    interfaces = {
        name.removesuffix("_interface"): getattr(node, name)
        for name in sorted(vars(type(node)))
        if name.endswith("_interface") and getattr(node, name)
    }
    return _render(
        request,
        "node.html",
        session,
        new,
        fields=fields,
        interfaces=interfaces,
        inventory=inventory.inventory if inventory is not None else None,
        ports=ports,
        **values,
    )


@router.get("/nodes/{ident}/summary")
@_guard
async def node_summary(request: Request, ident: str) -> Response:
    """The node page's state, diagnosis and actions alone, for the live refresh."""
    session, _new = _session(request, page=False)
    return _render(request, "node_summary.html", session, **await _summary_values(request, ident))


def _console_read(path: Path, position: int | None) -> tuple[int, int, bytes]:
    """(size, where the bytes start, bytes) of the console log from `position` (None: its end), or
    (-1, 0, b"") when there is no log. A shrunk file (rotated, recreated) is read from its start."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if position is None:
                position = max(0, size - CONSOLE_START)
            elif size < position:
                position = 0
            f.seek(position)
            return size, position, f.read(min(max(0, size - position), CONSOLE_CHUNK))
    except FileNotFoundError:
        return -1, 0, b""


async def console_tail(path: Path, stopping: streams.Stopping, keepalive: float) -> AsyncIterator[bytes]:
    """SSE messages of the console log's end, then of what is appended to it, until the server stops.

    The file is reopened by name on every look (in a thread: it may sit on slow storage), so a
    console interface that rotates or recreates it is followed to the new file.
    """
    position: int | None = None
    told_missing = False
    quiet = 0.0
    yield b": following\n\n"
    while not stopping():
        size, start, data = await asyncio.to_thread(_console_read, path, position)
        if size < 0 and not told_missing:
            told_missing = True
            yield streams.message(orjson.dumps({"missing": True}), event="status")
        if size >= 0:
            position = start + len(data)
        if data:
            yield streams.message(orjson.dumps({"text": data.decode("utf-8", "replace")}), event="console")
            quiet = 0.0
            continue
        await asyncio.sleep(CONSOLE_POLL)
        quiet += CONSOLE_POLL
        if quiet >= keepalive:
            quiet = 0.0
            yield b": keepalive\n\n"


async def merged(*sources: AsyncIterator[bytes], buffered: int = 16) -> AsyncIterator[bytes]:
    """The chunks of several streams as they come, until every one has ended.

    Each source is read by a task of its own into a small queue, so a slow client slows the sources
    down instead of growing a buffer; closing this generator (the client went away) cancels them.
    """
    queue: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=buffered)

    async def pump(source: AsyncIterator[bytes]) -> None:
        try:
            async for chunk in source:
                await queue.put(chunk)
        except Exception:
            log.exception("a dashboard stream failed")
        await queue.put(None)

    tasks = [asyncio.create_task(pump(source)) for source in sources]
    ended = 0
    try:
        while ended < len(tasks):
            chunk = await queue.get()
            if chunk is None:
                ended += 1
            else:
                yield chunk
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def console_source(settings: Any, node: Any) -> Path:
    """The file holding the node's serial console.

    A console interface that captures it (IPMI SOL) writes to base.console_log_path; a qemu node's VM
    writes its serial port to the `serial_log` of its definition file (driver_info's qemu_command),
    which is used when there is no captured log. Reads the definition file: call in a thread.
    """
    captured: Path = console_log_path(settings, node.uuid)
    if captured.exists() or node.driver != "qemu":
        return captured
    try:
        info = qemu.parse_driver_info(node.driver_info or {})
        if info.definition is not None:
            serial = qemu_machine.load_definition(info.definition, info.boot_mode).serial_log
            if serial is not None:
                return serial
    except (BootforgeError, qemu_machine.QemuError) as exc:
        log.info("node %s: no VM serial log (%s)", node.uuid, exc)
    return captured


@router.get("/nodes/{ident}/live")
@_guard
async def node_live(request: Request, ident: str) -> Response:
    """One stream per node page: its timeline (`timeline` messages with the row id, so a reconnect
    with Last-Event-ID resumes after the last row seen, as GET /v1/nodes/{ident}/events/stream) and
    its console log (`console` messages: the log's end, then what is appended; VM serial or SOL, as
    the node's console interface captures it). One connection, not two: a browser opens at most six
    to one server over HTTP/1.1, and every open tab holds its streams."""
    _session(request, page=False)
    services = _services(request)
    node = await load_node(services.conductor, ident)
    after_raw = request.headers.get("last-event-id", "")
    after = int(after_raw) if after_raw.isdigit() and len(after_raw) < 19 else None
    gate = _gate(request)
    stopping = _stopping(request)
    db, settings = services.conductor.db, services.settings
    path = await asyncio.to_thread(console_source, settings, node)

    async def body() -> AsyncIterator[bytes]:
        with gate.enter():
            timeline = streams.timeline(settings, db, node.id, after, TIMELINE_HISTORY, stopping)
            console = console_tail(path, stopping, settings.events.stream_keepalive)
            async for chunk in merged(timeline, console):
                yield chunk

    gate.check()
    return StreamingResponse(body(), media_type="text/event-stream", headers=SSE_HEADERS)


# --- actions ------------------------------------------------------------------------------------------


async def _act(services: Services, ident: str, form: dict[str, str]) -> None:
    action = form.get("action", "")
    nodes = services.nodes
    if action in VERBS:
        body: dict[str, Any] = {}
        if action == "deploy":
            image = form.get("image", "").strip()
            if not image:
                raise InvalidInput("Choose an image to deploy", "image")
            await nodes.update(ident, [{"op": "add", "path": "/instance_info/image_source", "value": image}])
            user_data = form.get("user_data", "")
            if user_data.strip():
                body["configdrive"] = {"user_data": user_data}
        await nodes.provision(ident, action, body)
    elif action in POWER:
        await nodes.power(ident, action, None)
    elif action == "boot device":
        await nodes.set_boot_device(ident, form.get("device", ""), form.get("persistent") == "on")
    elif action == "maintenance on":
        reason = form.get("reason", "").strip()[:255] or "set from the dashboard"
        await nodes.set_maintenance(ident, True, reason)
    elif action == "maintenance off":
        await nodes.set_maintenance(ident, False, None)
    else:
        raise InvalidInput(f"Unknown action {printable(action, 40)!r}", "action")


@router.post("/nodes/{ident}/action")
@_guard
async def node_action(request: Request, ident: str) -> Response:
    form = await _form(request)
    session = _checked(request, form)
    services = _services(request)
    try:
        node = await load_node(services.conductor, ident)
        await _act(services, node.uuid, form)
    except BootforgeError as exc:
        values = await _summary_values(request, ident)
        return _render(
            request,
            "action_failed.html",
            session,
            status=exc.http_status if 400 <= exc.http_status < 500 else 500,
            message=exc.message,
            **values,
        )
    return RedirectResponse(f"/ui/nodes/{node.uuid}", status_code=303)


# --- images -------------------------------------------------------------------------------------------


def _catalogue(request: Request) -> Any:
    images = getattr(request.app.state, "images", None)
    if images is None:
        raise NotFound("The image catalogue is not configured in this bootforge.")
    return images


def _shown_source(source: str | None) -> str:
    """An image's source without its query string: a signed URL's signature is a credential."""
    if not source:
        return ""
    return source.split("?", 1)[0] + (" (query hidden)" if "?" in source else "")


async def _images_page(
    request: Request, session: Session, new: bool = False, status: int = 200, **values: Any
) -> HTMLResponse:
    images = await _catalogue(request).list()
    rows = [
        {
            "name": i.name,
            "source": _shown_source(i.source),
            "disk_format": i.disk_format,
            "size": i.size,
            "status": i.status,
            "created_at": i.created_at,
        }
        for i in images
    ]
    return _render(request, "images.html", session, new, status=status, images=rows, **values)


@router.get("/images")
@_guard
async def images_view(request: Request) -> Response:
    session, new = _session(request)
    return await _images_page(request, session, new)


@router.post("/images")
@_guard
async def image_add(request: Request) -> Response:
    """Add an image by URL (or a path in images.import_dirs), as POST /v1/images: the import runs
    inside the request, the page answers when the image is ready or refused."""
    form = await _form(request)
    session = _checked(request, form)
    name, source = form.get("name", "").strip(), form.get("source", "").strip()
    try:
        if not name or not source:
            missing = "name" if not name else "source"
            raise InvalidInput("Both the image's name and its URL are needed", missing)
        await _catalogue(request).add(name, source)
    except BootforgeError as exc:
        status = exc.http_status if 400 <= exc.http_status < 500 else 500
        return await _images_page(request, session, status=status, error=exc.message, name=name)
    return RedirectResponse("/ui/images", status_code=303)
