"""HTTP basic authentication against an htpasswd file of bcrypt hashes, and when noauth is allowed."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import bcrypt
import httpx
import pytest
from apihelp import fault
from pydantic import ValidationError
from support.service import LATEST, InProcess

from bootforge.api.app import create_app
from bootforge.api.auth import Htpasswd
from bootforge.config import Settings


@pytest.fixture
async def secured(bf: InProcess, tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    htpasswd = tmp_path / "htpasswd"
    # htpasswd -B writes the $2y$ prefix; bootforge must read it like the $2b$ the library writes.
    digest = bcrypt.hashpw(b"correct horse", bcrypt.gensalt(rounds=4)).decode().replace("$2b$", "$2y$", 1)
    htpasswd.write_text(f"# operators\nadmin:{digest}\nbroken-line\n")
    app = create_app(bf.services, Htpasswd(htpasswd))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://localhost", headers=LATEST) as c:
        yield c


async def test_no_credentials_is_401_with_a_challenge(secured: httpx.AsyncClient) -> None:
    r = await secured.get("/v1/nodes")
    assert r.status_code == 401
    assert r.headers["WWW-Authenticate"].startswith("Basic")
    assert "authentication" in fault(r).lower()
    assert r.headers["X-OpenStack-Ironic-API-Maximum-Version"] == "1.78"


@pytest.mark.parametrize("user,password", [("admin", "wrong"), ("nobody", "correct horse"), ("admin", "")])
async def test_wrong_credentials_are_401(secured: httpx.AsyncClient, user: str, password: str) -> None:
    r = await secured.get("/v1/nodes", auth=(user, password))
    assert r.status_code == 401
    assert r.headers["WWW-Authenticate"].startswith("Basic")
    assert "password" in fault(r)


async def test_malformed_authorization_header_is_401(secured: httpx.AsyncClient) -> None:
    r = await secured.get("/v1/nodes", headers={"Authorization": "Basic !!!not-base64"})
    assert r.status_code == 401
    r = await secured.get("/v1/nodes", headers={"Authorization": "Bearer abc"})
    assert r.status_code == 401


async def test_right_credentials_are_accepted_repeatedly(secured: httpx.AsyncClient) -> None:
    for _ in range(2):
        r = await secured.get("/v1/nodes", auth=("admin", "correct horse"))
        assert r.status_code == 200
    r = await secured.post("/v1/nodes", json={"driver": "fake-hardware"}, auth=("admin", "correct horse"))
    assert r.status_code == 201


@pytest.mark.parametrize("path", ["/", "/v1", "/v1/"])
async def test_version_discovery_stays_public(secured: httpx.AsyncClient, path: str) -> None:
    r = await secured.get(path)
    assert r.status_code == 200
    assert r.json()


def test_noauth_is_refused_off_loopback(tmp_path: Path) -> None:
    with pytest.raises(ValidationError) as e:
        Settings.model_validate({"state_dir": tmp_path, "listen": "0.0.0.0:6385"})
    assert "noauth" in str(e.value) and "http_basic" in str(e.value)
    with pytest.raises(ValidationError):
        Settings.model_validate(
            {"state_dir": tmp_path, "listen": "192.0.2.10:6385", "auth_strategy": "noauth"}
        )


def test_noauth_is_allowed_on_loopback(tmp_path: Path) -> None:
    for listen in ("127.0.0.1:6385", "localhost:6385", "[::1]:6385"):
        assert Settings.model_validate({"state_dir": tmp_path, "listen": listen}).auth_strategy == "noauth"


def test_http_basic_needs_an_htpasswd_file(tmp_path: Path) -> None:
    with pytest.raises(ValidationError) as e:
        Settings.model_validate(
            {"state_dir": tmp_path, "listen": "0.0.0.0:6385", "auth_strategy": "http_basic"}
        )
    assert "htpasswd_file" in str(e.value)
    with pytest.raises(ValidationError, match="does not exist"):
        Settings.model_validate(
            {
                "state_dir": tmp_path,
                "listen": "0.0.0.0:6385",
                "auth_strategy": "http_basic",
                "htpasswd_file": tmp_path / "missing",
            }
        )
    (tmp_path / "htpasswd").write_text("")
    ok = Settings.model_validate(
        {
            "state_dir": tmp_path,
            "listen": "0.0.0.0:6385",
            "auth_strategy": "http_basic",
            "htpasswd_file": tmp_path / "htpasswd",
        }
    )
    assert ok.auth_strategy == "http_basic"


@pytest.mark.parametrize("host", ["evil.example.com", "10.0.0.5:6385", "127.0.0.1.nip.io"])
async def test_noauth_answers_only_to_loopback_names(bf: InProcess, host: str) -> None:
    """noauth listens on loopback, but a web page the operator opens can point a name of its own at
    127.0.0.1 (DNS rebinding) and drive the API as its own origin: the browser sends that name as Host."""
    app = create_app(bf.services, None)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1", headers=LATEST) as c:
        r = await c.post("/v1/nodes", json={"driver": "fake-hardware"}, headers={"Host": host})
        assert r.status_code == 403
        assert "loopback" in fault(r)
        assert (await c.get("/v1/nodes", headers={"Host": host})).status_code == 403
        for ok in ("127.0.0.1:6385", "localhost", "[::1]:6385", "127.0.0.2"):
            assert (await c.get("/v1/nodes", headers={"Host": ok})).status_code == 200, ok
        # Open by design, whatever address reaches bootforge: version discovery and the agent's
        # routes (a ramdisk behind a forwarder names the forwarder's address).
        assert (await c.get("/", headers={"Host": host})).status_code == 200
        lookup = await c.get("/v1/lookup?addresses=52:54:00:00:00:01", headers={"Host": host})
        assert lookup.status_code == 404
        command = await c.get("/v1/nodes/x/agent/command", headers={"Host": host})
        assert command.status_code != 403
