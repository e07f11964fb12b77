"""The dashboard (bootforge/web) in-process: login with the API's htpasswd, the session cookie and CSRF
checks, noauth mode, the fleet's filters, search and paging, masking on the node page, actions, the
console tail, and that the package runs no SQL. The browser test is tests/integration/test_web_browser.py.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace

import bcrypt
import httpx
import orjson
import pytest
from support.service import InProcess
from test_layering import ROOT, imported

from bootforge.api.app import create_app
from bootforge.api.auth import Htpasswd
from bootforge.conductor import fleet
from bootforge.web.pages import console_source, console_tail, merged
from bootforge.web.session import COOKIE, Sessions

PASSWORD = "correct horse"


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, "the page has no CSRF field"
    return found.group(1)


@pytest.fixture
async def authed(bf: InProcess, tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the app with http_basic auth (the htpasswd of the API), not logged in."""
    htpasswd = tmp_path / "htpasswd"
    digest = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()
    htpasswd.write_text(f"admin:{digest}\n")
    app = create_app(bf.services, Htpasswd(htpasswd))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://bootforge.test") as c:
        yield c


@pytest.fixture
async def ui(bf: InProcess) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the noauth app that names a loopback host, as a browser on the conductor does."""
    transport = httpx.ASGITransport(app=bf.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:6385") as c:
        yield c


async def login(c: httpx.AsyncClient, password: str = PASSWORD) -> httpx.Response:
    form = await c.get("/ui/login")
    assert form.status_code == 200
    return await c.post("/ui/login", data={"user": "admin", "password": password, "csrf": csrf_of(form.text)})


async def enrol(bf: InProcess, **body: object) -> dict[str, object]:
    r = await bf.client.post("/v1/nodes", json={"driver": "fake-hardware", **body})
    assert r.status_code == 201, r.text
    node: dict[str, object] = r.json()
    return node


async def test_login_with_the_api_credentials(bf: InProcess, authed: httpx.AsyncClient) -> None:
    node = await enrol(bf, name="rack1-n1")
    r = await authed.get("/ui/")
    assert r.status_code == 303 and r.headers["location"] == "/ui/login"
    # The API's basic auth is not asked for on /ui (the dashboard has its own login) ...
    assert (await authed.get("/v1/nodes")).status_code == 401
    wrong = await login(authed, "wrong")
    assert wrong.status_code == 401 and "Invalid user name or password" in wrong.text
    ok = await login(authed)
    assert ok.status_code == 303 and ok.headers["location"] == "/ui/"
    cookie = ok.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie and "max-age=" in cookie
    page = await authed.get("/ui/")
    assert page.status_code == 200 and "rack1-n1" in page.text and str(node["uuid"]) in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]
    # ... and a logged-in dashboard session is no API credential either.
    assert (await authed.get("/v1/nodes")).status_code == 401
    # The password never comes back in a page.
    assert PASSWORD not in page.text


async def test_login_needs_the_forms_csrf_token(authed: httpx.AsyncClient) -> None:
    await authed.get("/ui/login")
    r = await authed.post("/ui/login", data={"user": "admin", "password": PASSWORD, "csrf": "x"})
    assert r.status_code == 403
    assert COOKIE not in r.headers.get("set-cookie", "")


async def test_a_post_with_a_wrong_or_foreign_csrf_token_is_refused(
    bf: InProcess, authed: httpx.AsyncClient
) -> None:
    node = await enrol(bf, name="n1")
    await login(authed)
    page = await authed.get(f"/ui/nodes/{node['uuid']}")
    token = csrf_of(page.text)
    for bad in ({}, {"csrf": ""}, {"csrf": token[:-2] + "AA"}):
        r = await authed.post(f"/ui/nodes/{node['uuid']}/action", data={"action": "manage", **bad})
        assert r.status_code == 403, bad
    # A token of another session (another login of the same user) is not this session's.
    other = httpx.AsyncClient(transport=authed._transport, base_url="http://bootforge.test")
    async with other:
        await login(other)
        foreign = csrf_of((await other.get(f"/ui/nodes/{node['uuid']}")).text)
    assert foreign != token
    r = await authed.post(f"/ui/nodes/{node['uuid']}/action", data={"action": "manage", "csrf": foreign})
    assert r.status_code == 403
    await bf.conductor.wait_idle()
    assert (await bf.client.get(f"/v1/nodes/{node['uuid']}")).json()["provision_state"] == "enroll"
    # The right token acts, through the same service call as the API's.
    r = await authed.post(f"/ui/nodes/{node['uuid']}/action", data={"action": "manage", "csrf": token})
    assert r.status_code == 303
    await bf.conductor.wait_idle()
    assert (await bf.client.get(f"/v1/nodes/{node['uuid']}")).json()["provision_state"] == "manageable"


async def test_a_tampered_or_expired_cookie_is_refused(authed: httpx.AsyncClient) -> None:
    await login(authed)
    cookie = authed.cookies[COOKIE]
    body, mac = cookie.split(".")
    payload = orjson.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    payload["u"] = "root"
    forged = base64.urlsafe_b64encode(orjson.dumps(payload)).rstrip(b"=").decode()
    for bad in (f"{forged}.{mac}", f"{body}.{mac[:-2]}AA", body, "garbage", "a.b.c"):
        authed.cookies.set(COOKIE, bad)
        r = await authed.get("/ui/")
        assert r.status_code == 303 and r.headers["location"] == "/ui/login", bad
        assert (await authed.get("/ui/fleet/rows")).status_code == 401


async def test_a_noauth_session_is_no_login_once_auth_is_on(bf: InProcess, authed: httpx.AsyncClient) -> None:
    """The same key signs both: a cookie issued while the server ran noauth must not pass as a login
    after it was switched to http_basic."""
    noauth_cookie = bf.app.state.web_sessions.encode(bf.app.state.web_sessions.new(""))
    authed.cookies.set(COOKIE, noauth_cookie)
    r = await authed.get("/ui/")
    assert r.status_code == 303 and r.headers["location"] == "/ui/login"


def test_sessions_expire_and_tokens_are_bound() -> None:
    now = [1000.0]
    sessions = Sessions(b"k" * 32, ttl=60, clock=lambda: now[0])
    s = sessions.new("admin")
    cookie = sessions.encode(s)
    assert sessions.decode(cookie) == s
    assert sessions.check_csrf(s, sessions.csrf(s))
    assert not sessions.check_csrf(sessions.new("admin"), sessions.csrf(s))
    assert Sessions(b"j" * 32, clock=lambda: now[0]).decode(cookie) is None  # another key
    now[0] += 61
    assert sessions.decode(cookie) is None


async def test_noauth_needs_no_login_but_still_a_csrf_token(bf: InProcess, ui: httpx.AsyncClient) -> None:
    node = await enrol(bf, name="n1")
    c = ui
    assert (await c.get("/ui/login")).status_code == 303
    page = await c.get(f"/ui/nodes/{node['uuid']}")
    assert page.status_code == 200 and "local operator" in page.text
    r = await c.post(f"/ui/nodes/{node['uuid']}/action", data={"action": "manage"})
    assert r.status_code == 403
    r = await c.post(
        f"/ui/nodes/{node['uuid']}/action", data={"action": "manage", "csrf": csrf_of(page.text)}
    )
    assert r.status_code == 303, r.text
    await bf.conductor.wait_idle()
    summary = await c.get(f"/ui/nodes/{node['uuid']}/summary")
    assert 'id="provision-state">manageable' in summary.text


async def test_noauth_answers_only_to_a_loopback_host_name(bf: InProcess) -> None:
    """DNS rebinding: a stranger's name pointed at 127.0.0.1 would otherwise read the pages and the
    CSRF token as its own origin."""
    for host in ("127.0.0.1:6385", "localhost", "[::1]:6385", "127.0.0.2"):
        assert (await bf.client.get("/ui/", headers={"Host": host})).status_code == 200, host
    for host in ("bootforge.test", "evil.example", "127.0.0.1.evil.example", "localhost.evil"):
        r = await bf.client.get("/ui/", headers={"Host": host})
        assert r.status_code == 403 and "loopback" in r.text, host


async def test_a_refused_action_says_why(bf: InProcess, ui: httpx.AsyncClient) -> None:
    node = await enrol(bf)
    page = await ui.get(f"/ui/nodes/{node['uuid']}")
    r = await ui.post(
        f"/ui/nodes/{node['uuid']}/action", data={"action": "undeploy", "csrf": csrf_of(page.text)}
    )
    assert r.status_code == 409 and "can not be performed" in r.text
    r = await ui.post(
        f"/ui/nodes/{node['uuid']}/action", data={"action": "<b>rm</b>", "csrf": csrf_of(page.text)}
    )
    assert r.status_code == 400 and "<b>" not in r.text


async def test_the_node_page_masks_driver_info(bf: InProcess, ui: httpx.AsyncClient) -> None:
    node = await enrol(
        bf, name="masked", driver_info={"fake_password": "hunter2-very-secret", "fake_address": "10.0.0.9"}
    )
    await bf.client.post("/v1/ports", json={"node_uuid": node["uuid"], "address": "52:54:00:aa:bb:01"})
    page = await ui.get(f"/ui/nodes/{node['uuid']}")
    assert page.status_code == 200
    assert "hunter2-very-secret" not in page.text and "******" in page.text and "10.0.0.9" in page.text
    assert "52:54:00:aa:bb:01" in page.text
    assert (await ui.get("/ui/nodes/nonexistent")).status_code == 404


async def test_fleet_filters_search_and_pages(bf: InProcess, ui: httpx.AsyncClient) -> None:
    a = await enrol(bf, name="alpha-1", resource_class="gold")
    b = await enrol(bf, name="beta-2", resource_class="silver")
    await bf.client.post("/v1/ports", json={"node_uuid": b["uuid"], "address": "52:54:00:12:34:56"})
    await bf.client.put(f"/v1/nodes/{a['uuid']}/maintenance", json={"reason": "disk"})
    db = bf.conductor.db

    async def names(size: int = 50, page: int = 1, **f: object) -> list[str]:
        found = await fleet.fleet_page(db, fleet.FleetFilter(**f), page, size)  # type: ignore[arg-type]
        return [str(r["name"]) for r in found.rows]

    assert await names() == ["alpha-1", "beta-2"]
    assert await names(search="52:54:00:12") == ["beta-2"]
    assert await names(search="52-54-00-12-34-56") == ["beta-2"]
    assert await names(search=str(a["uuid"])[:8]) == ["alpha-1"]
    assert await names(search="ta-") == ["beta-2"]
    assert await names(search="%") == []  # LIKE wildcards are text
    assert await names(maintenance=True) == ["alpha-1"]
    assert await names(maintenance=False, resource_class="silver") == ["beta-2"]
    assert await names(provision_state="enroll", driver="fake-hardware") == ["alpha-1", "beta-2"]
    first = await fleet.fleet_page(db, fleet.FleetFilter(), 1, 1)
    assert first.total == 2 and first.has_next and [r["name"] for r in first.rows] == ["alpha-1"]
    assert await names(size=1, page=2) == ["beta-2"]
    page = await ui.get("/ui/", params={"q": "beta", "maintenance": "false"})
    assert "beta-2" in page.text and "alpha-1" not in page.text
    rows = await ui.get("/ui/fleet/rows", params={"maintenance": "true"})
    assert "alpha-1" in rows.text and "beta-2" not in rows.text and "<html" not in rows.text


def append(path: Path, data: bytes) -> None:
    with open(path, "ab") as f:
        f.write(data)


async def test_console_tail_follows_appends_and_rotation(tmp_path: Path) -> None:
    log = tmp_path / "console.log"
    stop = asyncio.Event()
    chunks = console_tail(log, stop.is_set, keepalive=30)

    async def next_event() -> dict[str, object]:
        while True:
            chunk = await asyncio.wait_for(anext(chunks), 5)
            if chunk.startswith(b"event:"):
                data = chunk.split(b"data: ", 1)[1].strip()
                found: dict[str, object] = orjson.loads(data)
                return found

    assert await next_event() == {"missing": True}
    log.write_bytes(b"x" * 20000 + b"BIOS\n")
    first = await next_event()
    assert str(first["text"]).endswith("BIOS\n") and len(str(first["text"])) == 16 * 1024
    append(log, b"login: \x1b[0m\n")
    assert await next_event() == {"text": "login: \x1b[0m\n"}
    log.write_bytes(b"new boot\n")  # shorter: recreated, read from its start
    assert await next_event() == {"text": "new boot\n"}
    stop.set()
    await chunks.aclose()


def test_the_dashboard_runs_no_sql() -> None:
    offenders = []
    for path in sorted((ROOT / "web").rglob("*.py")):
        for module, _names in imported(path):
            if module.split(".")[0] == "sqlalchemy" or (
                module.startswith("bootforge.db") and module != "bootforge.db.models"
            ):
                offenders.append(f"{path.relative_to(ROOT)} imports {module}")
    assert not offenders, offenders


def test_no_inline_script_or_style_in_templates() -> None:
    """The CSP allows only this origin's files: an inline script or style would be blocked."""
    for path in (ROOT / "web" / "templates").glob("*.html"):
        text = path.read_text()
        assert "<script>" not in text and " style=" not in text and "onclick" not in text, path.name
        assert not re.search(r'(src|href)="(https?:)?//', text), f"{path.name} loads from elsewhere"


async def test_deploy_with_a_catalogue_image_and_user_data(
    bf: InProcess, ui: httpx.AsyncClient, tmp_path: Path
) -> None:
    image = b"\0" * 510 + b"\x55\xaa" + b"\1" * 512  # a raw disk with an MBR signature
    assert (await bf.client.put("/v1/images/tiny/file", content=image)).status_code == 201
    node = await enrol(bf, name="d1")
    for verb in ("manage", "provide"):
        r = await bf.client.put(f"/v1/nodes/{node['uuid']}/states/provision", json={"target": verb})
        assert r.status_code == 202
        await bf.conductor.wait_idle()
    page = await ui.get(f"/ui/nodes/{node['uuid']}")
    assert 'id="act-deploy"' in page.text and '<option value="tiny">' in page.text
    form = {"action": "deploy", "image": "tiny", "user_data": "#cloud-config\npassword: s3cret-ud\n"}
    r = await ui.post(f"/ui/nodes/{node['uuid']}/action", data={**form, "csrf": csrf_of(page.text)})
    assert r.status_code == 303, r.text
    await bf.conductor.wait_idle()
    shown = (await bf.client.get(f"/v1/nodes/{node['uuid']}")).json()
    assert shown["provision_state"] == "active" and shown["instance_info"]["image_source"] == "tiny"
    page = await ui.get(f"/ui/nodes/{node['uuid']}")
    assert "s3cret-ud" not in page.text and 'id="act-undeploy"' in page.text


async def test_boot_device_and_power_actions(bf: InProcess, ui: httpx.AsyncClient) -> None:
    node = await enrol(bf)
    page = await ui.get(f"/ui/nodes/{node['uuid']}")
    token = csrf_of(page.text)
    url = f"/ui/nodes/{node['uuid']}/action"
    r = await ui.post(url, data={"action": "boot device", "device": "pxe", "csrf": token})
    assert r.status_code == 303, r.text
    device = (await bf.client.get(f"/v1/nodes/{node['uuid']}/management/boot_device")).json()
    assert device["boot_device"] == "pxe"
    r = await ui.post(url, data={"action": "boot device", "device": "floppy", "csrf": token})
    assert r.status_code == 400 and "Invalid boot device" in r.text
    assert (await ui.post(url, data={"action": "power on", "csrf": token})).status_code == 303
    await bf.conductor.wait_idle()
    assert (await bf.client.get(f"/v1/nodes/{node['uuid']}")).json()["power_state"] == "power on"
    r = await ui.post(url, data={"action": "maintenance on", "reason": "fan", "csrf": token})
    assert r.status_code == 303
    assert 'id="maintenance">yes: fan' in (await ui.get(f"/ui/nodes/{node['uuid']}/summary")).text


async def test_images_page_lists_and_adds_by_url(bf: InProcess, ui: httpx.AsyncClient) -> None:
    page = await ui.get("/ui/images")
    assert page.status_code == 200 and "The catalogue is empty" in page.text
    token = csrf_of(page.text)
    r = await ui.post("/ui/images", data={"name": "x", "source": "ftp://host/x.img", "csrf": token})
    assert r.status_code == 400 and 'id="image-error"' in r.text
    r = await ui.post("/ui/images", data={"name": "x", "source": "http://a/b", "csrf": "bad"})
    assert r.status_code == 403
    image = b"\0" * 510 + b"\x55\xaa" + b"\1" * 512
    assert (await bf.client.put("/v1/images/tiny/file", content=image)).status_code == 201
    assert "tiny" in (await ui.get("/ui/images")).text


async def test_login_failures_are_rate_limited_like_the_api(authed: httpx.AsyncClient) -> None:
    """The dashboard's login is the API's Htpasswd: its per-address failure limit applies (429)."""
    statuses = [(await login(authed, f"guess-{i}")).status_code for i in range(11)]
    assert statuses[:10] == [401] * 10 and statuses[10] == 429
    r = await login(authed)  # the right password, but this address is refused for now
    assert r.status_code == 429 and "Too many failed logins" in r.text


async def test_merged_streams_interleave_end_together_and_cancel_on_close() -> None:
    gate = asyncio.Event()
    closed: list[str] = []

    async def slow() -> AsyncIterator[bytes]:
        try:
            yield b"s1"
            await gate.wait()
            yield b"s2"
        finally:
            closed.append("slow")

    async def fast() -> AsyncIterator[bytes]:
        yield b"f1"
        yield b"f2"

    out = merged(slow(), fast())
    got = {await anext(out) for _ in range(3)}
    assert got == {b"s1", b"f1", b"f2"}
    gate.set()
    assert [c async for c in out] == [b"s2"]  # ends once both sources have ended

    forever = asyncio.Event()

    async def hanging() -> AsyncIterator[bytes]:
        try:
            yield b"h"
            await forever.wait()
            yield b"never"
        finally:
            closed.append("hanging")

    out = merged(hanging())
    assert await anext(out) == b"h"
    await out.aclose()  # the client went away: the source's task is cancelled and it closes
    assert closed == ["slow", "hanging"]


def test_console_source_is_the_captured_log_or_a_qemu_vms_serial_log(bf: InProcess, tmp_path: Path) -> None:
    vm = tmp_path / "vm1"
    vm.mkdir()
    (vm / "vm1.json").write_text(json.dumps({"name": "vm1", "serial_log": "console.log"}))
    info = {"qemu_qmp_socket": str(vm / "qmp.sock"), "qemu_command": str(vm / "vm1.json")}
    node = SimpleNamespace(uuid="0b6f1c2e-1d7a-4a57-9d0e-2f5b2f7b3c11", driver="qemu", driver_info=info)
    captured = bf.settings.state_dir / "console" / f"{node.uuid}.log"
    assert console_source(bf.settings, node) == vm / "console.log"  # relative to the definition
    broken = SimpleNamespace(uuid=node.uuid, driver="qemu", driver_info={"qemu_command": "x"})
    assert console_source(bf.settings, broken) == captured  # bad driver_info: no exception
    captured.parent.mkdir(parents=True, exist_ok=True)
    captured.write_text("SOL\n")
    assert console_source(bf.settings, node) == captured  # a captured console wins
    ipmi = SimpleNamespace(uuid="0b6f1c2e-1d7a-4a57-9d0e-2f5b2f7b3c12", driver="ipmi", driver_info={})
    assert console_source(bf.settings, ipmi).name == f"{ipmi.uuid}.log"


async def test_the_summary_shows_the_running_step(tmp_path: Path) -> None:
    from support.service import in_process

    async for bf in in_process(tmp_path, fake_delays={"deploy": 1.0}):
        transport = httpx.ASGITransport(app=bf.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as ui:
            node = await enrol(bf, name="s1")
            for verb in ("manage", "provide"):
                r = await bf.client.put(f"/v1/nodes/{node['uuid']}/states/provision", json={"target": verb})
                assert r.status_code == 202
                await bf.conductor.wait_idle()
            r = await bf.client.put(f"/v1/nodes/{node['uuid']}/states/provision", json={"target": "active"})
            assert r.status_code == 202
            seen = ""
            async with asyncio.timeout(10):
                while 'id="step"' not in seen:
                    seen = (await ui.get(f"/ui/nodes/{node['uuid']}/summary")).text
                    await asyncio.sleep(0.05)
            assert re.search(r'id="step">deploy step deploy\.\w+', seen), seen
            assert 'data-busy="1"' in seen
            await bf.conductor.wait_idle()
            done = (await ui.get(f"/ui/nodes/{node['uuid']}/summary")).text
            assert 'id="step"' not in done and 'data-busy=""' in done
