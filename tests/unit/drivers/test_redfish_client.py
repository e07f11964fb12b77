"""RedfishClient against recorded services (tests/data/redfish) served by FakeBmc over
httpx.MockTransport, which also checks what the client sends: authentication, If-Match, bodies."""

from __future__ import annotations

import asyncio
import base64
import copy
import itertools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from bootforge.drivers.redfish import RedfishClient, RedfishError, parse_driver_info
from bootforge.drivers.redfish import client as client_module
from bootforge.drivers.redfish.info import RedfishInfo

DATA = Path(__file__).resolve().parents[2] / "data" / "redfish"
ADDRESS = "https://bmc.test"
USER, PASSWORD = "admin", "s3cret-pw"

# A rule sees each request first; a Response it returns is the answer (a vendor's refusal).
Rule = Callable[["FakeBmc", httpx.Request, Any], httpx.Response | None]


def error(status: int, message: str, message_id: str = "Base.1.8.GeneralError") -> httpx.Response:
    return httpx.Response(
        status,
        json={
            "error": {
                "code": message_id,
                "message": "See @Message.ExtendedInfo",
                "@Message.ExtendedInfo": [
                    {"MessageId": message_id, "Message": message, "Severity": "Warning"}
                ],
            }
        },
    )


class FakeBmc:
    """A Redfish service from a fixture: GET, PATCH (with ETags), Reset / InsertMedia / EjectMedia
    actions, sessions. Power changes land after `power_delay` reads of the system, like a real BMC."""

    def __init__(
        self,
        fixture: str,
        *,
        rules: list[Rule] | None = None,
        require_if_match: bool = False,
        power_delay: int = 1,
        sessions: bool = True,
        etags: bool = True,
    ) -> None:
        self.docs: dict[str, dict[str, Any]] = json.loads((DATA / f"{fixture}.json").read_text())
        if not sessions:
            self.docs.pop("/redfish/v1/SessionService/Sessions", None)
        self.rules = list(rules or [])
        self.require_if_match = require_if_match
        self.etags = etags
        self.power_delay = power_delay
        self.requests: list[httpx.Request] = []
        self.versions: dict[str, int] = {}
        self.tokens: dict[str, str] = {}  # token -> session path
        self.pending_power: list[tuple[int, str, str]] = []  # (reads left, system path, state)
        self._ids = itertools.count(1)

    # -- helpers for tests --
    @property
    def system_path(self) -> str:
        return str(self.docs["/redfish/v1/Systems"]["Members"][0]["@odata.id"])

    def system(self) -> dict[str, Any]:
        return self.docs[self.system_path]

    def sent(self, method: str, suffix: str = "") -> list[httpx.Request]:
        return [r for r in self.requests if r.method == method and r.url.path.endswith(suffix)]

    def bodies(self, method: str, suffix: str = "") -> list[Any]:
        return [json.loads(r.content) if r.content else None for r in self.sent(method, suffix)]

    def etag(self, path: str) -> str:
        return f'"{self.versions.get(path, 0)}"'

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    def client(self, session_idle: float = 0.0, **info: Any) -> RedfishClient:
        driver_info = {"redfish_address": ADDRESS, "redfish_username": USER, "redfish_password": PASSWORD}
        driver_info.update(info)
        return RedfishClient(
            parse_driver_info(driver_info),
            transport=self.transport(),
            poll_interval=0.01,
            session_idle=session_idle,
        )

    # -- the service --
    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        path = request.url.path
        body = json.loads(request.content) if request.content else None
        sessions = "/redfish/v1/SessionService/Sessions"
        if request.method == "POST" and path == sessions and sessions in self.docs:
            if body != {"UserName": USER, "Password": PASSWORD}:
                return error(401, "Invalid username or password", "Base.1.8.NoValidSession")
            n = next(self._ids)
            token, location = f"token-{n}", f"{sessions}/{n}"
            self.tokens[token] = location
            return httpx.Response(
                201, headers={"X-Auth-Token": token, "Location": location}, json={"Id": str(n)}
            )
        if path not in ("/redfish/v1/", "/redfish/v1") and not self._authorized(request):
            return error(401, "The request requires authentication", "Base.1.8.NoValidSession")
        for rule in self.rules:
            answer = rule(self, request, body)
            if answer is not None:
                return answer
        if request.method == "DELETE" and path in self.tokens.values():
            self.tokens = {t: p for t, p in self.tokens.items() if p != path}
            return httpx.Response(204)
        if request.method == "GET":
            return self._get(path)
        if request.method == "PATCH":
            return self._patch(request, path, body)
        if request.method == "POST":
            return self._action(path, body)
        return error(405, f"{request.method} is not allowed on {path}")

    def _authorized(self, request: httpx.Request) -> bool:
        token = request.headers.get("X-Auth-Token")
        if token is not None:
            return token in self.tokens
        auth = request.headers.get("Authorization", "")
        expected = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        return auth == f"Basic {expected}"

    def _get(self, path: str) -> httpx.Response:
        doc = self.docs.get(path) or self.docs.get(path.rstrip("/")) or self.docs.get(path + "/")
        if doc is None:
            return error(
                404, f"The resource at the URI {path} was not found.", "Base.1.8.ResourceMissingAtURI"
            )
        for item in self.pending_power:
            if item[1] == path:
                self.pending_power.remove(item)
                reads, p, state = item
                if reads <= 1:
                    doc["PowerState"] = state
                else:
                    self.pending_power.append((reads - 1, p, state))
                break
        headers = {"ETag": self.etag(path)} if self.etags else {}
        return httpx.Response(200, json=copy.deepcopy(doc), headers=headers)

    def _patch(self, request: httpx.Request, path: str, body: Any) -> httpx.Response:
        doc = self.docs.get(path)
        if doc is None:
            return error(404, f"The resource at the URI {path} was not found.")
        match = request.headers.get("If-Match")
        if match is None and self.require_if_match:
            return error(
                428, "The request did not provide the required precondition", "Base.1.8.PreconditionRequired"
            )
        if match is not None and match not in ("*", self.etag(path)):
            return error(
                412, "The ETag supplied did not match the ETag of the resource", "Base.1.8.PreconditionFailed"
            )
        _merge(doc, body)
        self.versions[path] = self.versions.get(path, 0) + 1
        return httpx.Response(204)

    def _action(self, path: str, body: Any) -> httpx.Response:
        if path.endswith("/Actions/ComputerSystem.Reset"):
            system = path.rsplit("/Actions/", 1)[0]
            reset = (body or {}).get("ResetType")
            state = {
                "On": "On",
                "ForceOn": "On",
                "ForceOff": "Off",
                "GracefulShutdown": "Off",
                "ForceRestart": "On",
                "GracefulRestart": "On",
                "PowerCycle": "On",
            }.get(reset)
            if state is None:
                return error(
                    400,
                    f"The value {reset} for ResetType is not allowed",
                    "Base.1.8.ActionParameterValueNotInList",
                )
            self.pending_power.append((self.power_delay, system, state))
            return httpx.Response(204)
        if path.endswith("/Actions/VirtualMedia.InsertMedia"):
            vm = self.docs[path.rsplit("/Actions/", 1)[0]]
            vm.update(Image=body["Image"], Inserted=body.get("Inserted", True), ConnectedVia="URI")
            return httpx.Response(204)
        if path.endswith("/Actions/VirtualMedia.EjectMedia"):
            vm = self.docs[path.rsplit("/Actions/", 1)[0]]
            vm.update(Image=None, Inserted=False, ConnectedVia="NotConnected")
            return httpx.Response(204)
        return error(404, f"No action at {path}")


@pytest.fixture(autouse=True)
def fresh_auth_memory() -> None:
    """Every test starts without the client's memory of which services work with basic auth, and
    without kept sessions."""
    client_module._basic_works.clear()
    client_module._pool.clear()


def _merge(doc: dict[str, Any], patch: dict[str, Any]) -> None:
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(doc.get(key), dict):
            _merge(doc[key], value)
        else:
            doc[key] = value


# -- connection, authentication, discovery ---------------------------------------------------------


async def test_session_login_is_used_and_deleted_on_close() -> None:
    bmc = FakeBmc("dell-idrac9")
    async with bmc.client() as client:
        assert await client.power_state() == "Off"
    assert [r.method for r in bmc.sent("POST", "/Sessions")] == ["POST"]
    gets = bmc.sent("GET")
    assert all(r.headers.get("X-Auth-Token") == "token-1" for r in gets if r.url.path != "/redfish/v1/")
    assert all("Authorization" not in r.headers for r in bmc.requests)
    assert [r.url.path for r in bmc.sent("DELETE")] == ["/redfish/v1/SessionService/Sessions/1"]
    assert bmc.tokens == {}


async def test_no_session_service_falls_back_to_basic_auth_and_remembers() -> None:
    bmc = FakeBmc("generic-two-systems", sessions=False)
    for _ in range(3):
        async with bmc.client(redfish_system_id="437XR1138R2") as client:
            assert client.system_path == "/redfish/v1/Systems/437XR1138R2"
            assert await client.power_state() == "Off"  # as read at connect: no second GET
    assert any(r.headers.get("Authorization", "").startswith("Basic ") for r in bmc.sent("GET"))
    assert len(bmc.sent("POST", "/Sessions")) == 1  # later clients go straight to basic auth
    assert len(bmc.sent("GET", "/437XR1138R2")) == 3


async def test_session_only_refuses_a_service_without_sessions() -> None:
    bmc = FakeBmc("generic-two-systems", sessions=False)
    with pytest.raises(RedfishError, match=r"Sessions \(session login\) failed: HTTP 401"):
        async with bmc.client(redfish_auth_type="session", redfish_system_id="437XR1138R2"):
            pass


async def test_basic_only_never_opens_a_session() -> None:
    bmc = FakeBmc("hpe-ilo5")
    async with bmc.client(redfish_auth_type="basic") as client:
        await client.power_state()
    assert bmc.sent("POST", "/Sessions") == []


async def test_an_expired_session_is_renewed_once() -> None:
    bmc = FakeBmc("lenovo-xcc")
    async with bmc.client() as client:
        bmc.tokens.clear()  # the BMC dropped every session
        assert await client.power_state(refresh=True) == "Off"
    assert len(bmc.sent("POST", "/Sessions")) == 2


async def test_closing_a_session_the_bmc_dropped_opens_no_new_one() -> None:
    bmc = FakeBmc("dell-idrac9")
    async with bmc.client() as client:
        await client.power_state(refresh=True)
        bmc.tokens.clear()
    assert len(bmc.sent("POST", "/Sessions")) == 1 and bmc.tokens == {}
    assert [r.url.path for r in bmc.sent("DELETE")] == ["/redfish/v1/SessionService/Sessions/1"]


async def test_kept_sessions_serve_the_next_clients_and_are_closed_on_request() -> None:
    bmc = FakeBmc("hpe-ilo5")
    for _ in range(3):
        async with bmc.client(session_idle=60) as client:
            assert await client.power_state() == "Off"
    assert len(bmc.sent("POST", "/Sessions")) == 1 and bmc.sent("DELETE") == []
    assert len(bmc.sent("GET", "/redfish/v1/")) == 1  # the service root is kept with the session
    assert len(bmc.sent("GET", "/Systems/1")) == 3  # one request per later operation
    assert await client_module.close_idle_sessions() == 1
    assert bmc.tokens == {} and [r.url.path for r in bmc.sent("DELETE")] == [
        "/redfish/v1/SessionService/Sessions/1"
    ]


async def test_a_kept_session_the_bmc_dropped_is_replaced() -> None:
    bmc = FakeBmc("lenovo-xcc")
    async with bmc.client(session_idle=60):
        pass
    bmc.tokens.clear()  # the BMC restarted
    async with bmc.client(session_idle=60) as client:
        assert await client.power_state(refresh=True) == "Off"
    assert len(bmc.sent("POST", "/Sessions")) == 2
    assert list(bmc.tokens) == ["token-2"]
    assert [e.token for e in client_module._pool.values()] == ["token-2"]


async def test_a_session_idle_too_long_is_closed_and_replaced() -> None:
    bmc = FakeBmc("dell-idrac9")
    async with bmc.client(session_idle=60):
        pass
    for entry in client_module._pool.values():
        entry.idle_since -= 61
    async with bmc.client(session_idle=60):
        pass
    assert [r.url.path for r in bmc.sent("DELETE")] == ["/redfish/v1/SessionService/Sessions/1"]
    assert list(bmc.tokens) == ["token-2"]


async def test_concurrent_clients_share_one_kept_session() -> None:
    bmc = FakeBmc("lenovo-xcc")
    async with bmc.client(session_idle=60):
        pass

    async def one() -> str | None:
        async with bmc.client(session_idle=60) as client:
            return await client.power_state(refresh=True)

    assert await asyncio.gather(*(one() for _ in range(5))) == ["Off"] * 5
    assert len(bmc.sent("POST", "/Sessions")) == 1 and len(bmc.tokens) == 1
    assert [e.users for e in client_module._pool.values()] == [0]


async def test_wrong_password_is_a_named_401_without_the_password() -> None:
    bmc = FakeBmc("dell-idrac9")
    with pytest.raises(RedfishError) as caught:
        async with bmc.client(redfish_password="wrong-pw"):
            pass
    message = caught.value.message
    assert "HTTP 401" in message and ADDRESS in message and "redfish_password" in message
    assert "wrong-pw" not in message and PASSWORD not in message
    assert caught.value.status == 401


async def test_the_only_system_is_found_and_several_need_a_system_id() -> None:
    async with FakeBmc("openbmc").client() as client:
        assert client.system_path == "/redfish/v1/Systems/system"
    with pytest.raises(RedfishError) as caught:
        async with FakeBmc("generic-two-systems", sessions=False).client():
            pass
    assert "redfish_system_id" in caught.value.message
    assert "/redfish/v1/Systems/437XR1138R2, /redfish/v1/Systems/437XR1138R2-2" in caught.value.message


async def test_system_id_by_id_or_path_and_unknown_ids_are_named() -> None:
    bmc = FakeBmc("generic-two-systems", sessions=False)
    async with bmc.client(redfish_system_id="437XR1138R2-2") as client:
        assert client.system_path == "/redfish/v1/Systems/437XR1138R2-2"
    with pytest.raises(RedfishError, match=r"Systems/nope failed: HTTP 404: The resource at the URI"):
        async with bmc.client(redfish_system_id="/redfish/v1/Systems/nope"):
            pass


# -- power -------------------------------------------------------------------------------------------


async def test_power_on_uses_an_advertised_reset_type_and_waits_for_the_state() -> None:
    bmc = FakeBmc("dell-idrac9", power_delay=3)
    async with bmc.client() as client:
        notes = await client.set_power("on", timeout=5)
    assert notes == ["On"]
    assert bmc.bodies("POST", "ComputerSystem.Reset") == [{"ResetType": "On"}]
    assert bmc.system()["PowerState"] == "On"
    assert len(bmc.sent("GET", "System.Embedded.1")) >= 3  # it polled until the change landed


async def test_reset_types_come_from_action_info_when_the_bmc_uses_it() -> None:
    bmc = FakeBmc("openbmc")
    bmc.system()["PowerState"] = "On"
    async with bmc.client() as client:
        assert "PowerCycle" in (await client.reset_types() or ())
        assert await client.set_power("reboot", timeout=5) == ["ForceRestart"]


async def test_reboot_without_restart_types_is_off_then_on() -> None:
    bmc = FakeBmc("dell-idrac8")
    bmc.system()["PowerState"] = "On"
    bmc.system()["Actions"]["#ComputerSystem.Reset"]["ResetType@Redfish.AllowableValues"] = ["On", "ForceOff"]
    async with bmc.client() as client:
        assert await client.set_power("reboot", timeout=5) == ["ForceOff", "On"]


async def test_soft_off_that_the_host_ignores_ends_in_force_off() -> None:
    def ignore_graceful(fake: FakeBmc, request: httpx.Request, body: Any) -> httpx.Response | None:
        if body == {"ResetType": "GracefulShutdown"}:
            return httpx.Response(204)  # accepted, and nothing happens (no OS to shut down)
        return None

    bmc = FakeBmc("lenovo-xcc", rules=[ignore_graceful])
    bmc.system()["PowerState"] = "On"
    async with bmc.client() as client:
        notes = await client.set_power("soft_off", timeout=0.2)
    assert notes[0] == "GracefulShutdown" and notes[-1] == "ForceOff" and "forced off" in notes[1]
    assert bmc.system()["PowerState"] == "Off"


async def test_soft_reboot_without_graceful_restart_is_shutdown_then_on() -> None:
    bmc = FakeBmc("hpe-ilo5")  # this fixture advertises no GracefulRestart
    bmc.system()["PowerState"] = "On"
    async with bmc.client() as client:
        assert await client.set_power("soft_reboot", timeout=5) == ["GracefulShutdown", "On"]


async def test_a_power_state_that_never_comes_is_a_named_timeout() -> None:
    def never(fake: FakeBmc, request: httpx.Request, body: Any) -> httpx.Response | None:
        return httpx.Response(204) if request.url.path.endswith("ComputerSystem.Reset") else None

    bmc = FakeBmc("dell-idrac9", rules=[never])
    async with bmc.client() as client:
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(RedfishError, match=r"accepted On, but PowerState .* is Off, not On, after 0.3 s"):
            await client.set_power("on", timeout=0.3)
        assert loop.time() - started < 2


async def test_power_on_refused_when_no_on_type_is_offered() -> None:
    bmc = FakeBmc("dell-idrac8")
    bmc.system()["Actions"]["#ComputerSystem.Reset"]["ResetType@Redfish.AllowableValues"] = [
        "ForceOff",
        "Nmi",
    ]
    async with bmc.client() as client:
        with pytest.raises(
            RedfishError,
            match=r"offers none of the reset types for on \(On, ForceOn\); it offers: ForceOff, Nmi",
        ):
            await client.set_power("on", timeout=1)
    assert bmc.sent("POST", "ComputerSystem.Reset") == []


# -- busy BMCs, ETags, task monitors ---------------------------------------------------------------


def busy_first(times: int, status: int = 503, retry_after: str = "0.05") -> Rule:
    left = [times]

    def rule(fake: FakeBmc, request: httpx.Request, body: Any) -> httpx.Response | None:
        if request.method == "GET" and request.url.path == fake.system_path and left[0] > 0:
            left[0] -= 1
            return httpx.Response(status, headers={"Retry-After": retry_after}, json={})
        return None

    return rule


@pytest.mark.parametrize("status", [503, 429])
async def test_busy_bmc_is_waited_for_then_answers(status: int) -> None:
    bmc = FakeBmc("dell-idrac9", rules=[busy_first(2, status)])
    async with bmc.client() as client:
        assert await client.power_state() == "Off"
    assert len(bmc.sent("GET", "System.Embedded.1")) == 3  # 2 busy at connect, then the answer


async def test_busy_past_the_deadline_is_a_named_error() -> None:
    bmc = FakeBmc("dell-idrac9", rules=[busy_first(100, 503, "30")])
    with pytest.raises(
        RedfishError,
        match=r"System.Embedded.1 \(busy, and Retry-After 30 s passes the deadline\) failed: HTTP 503",
    ):
        async with bmc.client(redfish_timeout=2):
            pass


async def test_vendor_busy_message_is_retried() -> None:
    def sys518_once(fake: FakeBmc, request: httpx.Request, body: Any) -> httpx.Response | None:
        if request.method == "PATCH" and not fake.versions.get("busy-done"):
            fake.versions["busy-done"] = 1
            return error(
                400, "iDRAC is not ready. The configuration values cannot be accessed.", "IDRAC.2.8.SYS518"
            )
        return None

    bmc = FakeBmc("dell-idrac9", rules=[sys518_once])
    async with bmc.client() as client:
        await client.set_boot("Pxe", persistent=False)
    assert len(bmc.sent("PATCH")) == 2


async def test_patch_sends_if_match_and_retries_once_after_412() -> None:
    def changed_meanwhile(fake: FakeBmc, request: httpx.Request, body: Any) -> httpx.Response | None:
        if request.method == "PATCH" and len(fake.sent("PATCH")) == 1:
            fake.versions[request.url.path] = 7  # someone changed the system since the client read it
        return None

    bmc = FakeBmc("dell-idrac9", rules=[changed_meanwhile])
    async with bmc.client() as client:
        await client.set_boot("Pxe", persistent=True)
    patches = bmc.sent("PATCH")
    assert [p.headers["If-Match"] for p in patches] == ['"0"', '"7"']
    assert bmc.system()["Boot"]["BootSourceOverrideTarget"] == "Pxe"


async def test_a_weak_etag_is_sent_strong_after_a_412() -> None:
    def weak_tags(fake: FakeBmc, request: httpx.Request, body: Any) -> httpx.Response | None:
        path = request.url.path
        if request.method == "GET" and path == fake.system_path:
            response = fake._get(path)
            response.headers["ETag"] = "W/" + fake.etag(path)
            return response
        if request.method == "PATCH" and request.headers.get("If-Match", "").startswith("W/"):
            return error(412, "The If-Match precondition failed", "Base.1.8.PreconditionFailed")
        return None

    bmc = FakeBmc("hpe-ilo5", rules=[weak_tags])
    async with bmc.client() as client:
        await client.set_boot("Pxe", persistent=False)
    assert [p.headers["If-Match"] for p in bmc.sent("PATCH")] == ['W/"0"', '"0"']
    assert bmc.system()["Boot"]["BootSourceOverrideTarget"] == "Pxe"


async def test_a_second_412_is_an_error_with_the_bmc_message() -> None:
    def always_412(fake: FakeBmc, request: httpx.Request, body: Any) -> httpx.Response | None:
        if request.method == "PATCH":
            return error(412, "The ETag supplied did not match", "Base.1.8.PreconditionFailed")
        return None

    bmc = FakeBmc("dell-idrac9", rules=[always_412])
    async with bmc.client() as client:
        with pytest.raises(RedfishError) as caught:
            await client.set_boot("Pxe", persistent=False)
    assert len(bmc.sent("PATCH")) == 2
    assert "HTTP 412: The ETag supplied did not match" in caught.value.message
    assert f"PATCH {ADDRESS}/redfish/v1/Systems/System.Embedded.1" in caught.value.message


async def test_task_monitor_is_polled_to_the_end() -> None:
    polls = [0]

    def tasked(fake: FakeBmc, request: httpx.Request, body: Any) -> httpx.Response | None:
        if request.method == "PATCH" and request.url.path.endswith("/SecureBoot"):
            _merge(fake.docs[request.url.path], body)
            return httpx.Response(202, headers={"Location": "/redfish/v1/TaskService/TaskMonitors/9"})
        if request.url.path == "/redfish/v1/TaskService/TaskMonitors/9":
            polls[0] += 1
            if polls[0] < 3:
                return httpx.Response(202, headers={"Retry-After": "0"}, json={"TaskState": "Running"})
            return httpx.Response(200, json={"TaskState": "Completed", "TaskStatus": "OK"})
        return None

    bmc = FakeBmc("dell-idrac9", rules=[tasked])
    async with bmc.client() as client:
        await client.set_secure_boot(True)
    assert polls[0] == 3


async def test_a_failed_task_names_its_message() -> None:
    def failing(fake: FakeBmc, request: httpx.Request, body: Any) -> httpx.Response | None:
        if request.method == "PATCH":
            return httpx.Response(202, headers={"Location": f"{ADDRESS}/redfish/v1/TaskService/Tasks/4"})
        if request.url.path == "/redfish/v1/TaskService/Tasks/4":
            return httpx.Response(
                200,
                json={
                    "TaskState": "Exception",
                    "Messages": [{"Message": "Secure Boot keys are not enrolled"}],
                },
            )
        return None

    async with FakeBmc("dell-idrac9", rules=[failing]).client() as client:
        with pytest.raises(
            RedfishError, match="failed in task /redfish/v1/TaskService/Tasks/4: Secure Boot keys"
        ):
            await client.set_secure_boot(True)


async def test_a_task_that_never_ends_stops_at_its_deadline() -> None:
    def endless(fake: FakeBmc, request: httpx.Request, body: Any) -> httpx.Response | None:
        if request.method == "PATCH":
            return httpx.Response(202, headers={"Location": "/redfish/v1/TaskService/Tasks/5"})
        if request.url.path.endswith("/Tasks/5"):
            return httpx.Response(202, headers={"Retry-After": "0"}, json={"TaskState": "Running"})
        return None

    bmc = FakeBmc("dell-idrac9", rules=[endless])
    info = parse_driver_info(
        {"redfish_address": ADDRESS, "redfish_username": USER, "redfish_password": PASSWORD}
    )
    async with RedfishClient(info, transport=bmc.transport(), poll_interval=0.01, task_timeout=0.3) as client:
        with pytest.raises(RedfishError, match=r"still running after 0\.3 s"):
            await client.set_secure_boot(True)


async def test_a_location_on_another_host_is_refused() -> None:
    def elsewhere(fake: FakeBmc, request: httpx.Request, body: Any) -> httpx.Response | None:
        if request.method == "PATCH":
            return httpx.Response(
                202, headers={"Location": "https://attacker.test/redfish/v1/TaskService/Tasks/1"}
            )
        return None

    bmc = FakeBmc("dell-idrac9", rules=[elsewhere])
    async with bmc.client() as client:
        with pytest.raises(RedfishError, match="pointed to another host"):
            await client.set_secure_boot(True)
    assert all(r.url.host == "bmc.test" for r in bmc.requests)


# -- boot override, Secure Boot, virtual media ------------------------------------------------------


async def test_boot_override_once_and_continuous_and_mode() -> None:
    bmc = FakeBmc("dell-idrac9")
    async with bmc.client() as client:
        await client.set_boot("Pxe", persistent=False)
        assert (await client.get_boot()).enabled == "Once"
        await client.set_boot("Hdd", persistent=True, mode="Legacy")
        state = await client.get_boot()
    assert (state.target, state.enabled, state.mode) == ("Hdd", "Continuous", "Legacy")


async def test_boot_values_the_bmc_does_not_offer_are_refused_before_sending() -> None:
    bmc = FakeBmc("dell-idrac8")
    async with bmc.client() as client:
        with pytest.raises(
            RedfishError, match=r"does not offer boot target UefiHttp .* it offers: None, Pxe, Cd"
        ):
            await client.set_boot("UefiHttp", persistent=False)
        with pytest.raises(RedfishError, match="offers no HttpBootUri"):
            await client.set_boot("Pxe", http_boot_uri="http://x/boot.efi")
    assert bmc.sent("PATCH") == []


async def test_uefi_http_boot_with_a_uri_where_offered() -> None:
    bmc = FakeBmc("hpe-ilo5")
    async with bmc.client() as client:
        await client.set_boot("UefiHttp", persistent=False, http_boot_uri="http://192.0.2.1:8080/ipxe.efi")
    assert bmc.bodies("PATCH")[-1] == {
        "Boot": {
            "BootSourceOverrideTarget": "UefiHttp",
            "BootSourceOverrideEnabled": "Once",
            "HttpBootUri": "http://192.0.2.1:8080/ipxe.efi",
        }
    }


async def test_a_boot_change_the_bmc_silently_drops_is_reported() -> None:
    def drop_mode(fake: FakeBmc, request: httpx.Request, body: Any) -> httpx.Response | None:
        if request.method == "PATCH":
            body["Boot"].pop("BootSourceOverrideMode", None)
            _merge(fake.docs[request.url.path], body)
            return httpx.Response(204)
        return None

    async with FakeBmc("openbmc", rules=[drop_mode]).client() as client:
        with pytest.raises(RedfishError, match="accepted boot mode Legacy but reads back UEFI"):
            await client.set_boot("Pxe", persistent=False, mode="Legacy")


async def test_secure_boot_read_and_set() -> None:
    bmc = FakeBmc("supermicro-x12")
    async with bmc.client() as client:
        state = await client.secure_boot()
        assert state is not None and state.enabled is False and state.current == "Disabled"
        await client.set_secure_boot(True)
        await client.set_secure_boot(True)  # already on: nothing sent
        state = await client.secure_boot()
    assert state is not None and state.enabled is True
    assert bmc.bodies("PATCH", "/SecureBoot") == [{"SecureBootEnable": True}]


async def test_no_secure_boot_resource_is_none_and_setting_it_is_named() -> None:
    async with FakeBmc("generic-two-systems", sessions=False).client(
        redfish_system_id="437XR1138R2"
    ) as client:
        assert await client.secure_boot() is None
        with pytest.raises(RedfishError, match="has no SecureBoot resource"):
            await client.set_secure_boot(False)


async def test_insert_and_eject_media() -> None:
    bmc = FakeBmc("dell-idrac9")
    url = "http://192.0.2.1:8080/vmedia/node.iso"
    async with bmc.client() as client:
        vm = await client.insert_media(url)
        assert (vm.inserted, vm.image, vm.under) == (True, url, "systems")
        assert (await client.insert_media(url)).image == url  # already there: not inserted again
        assert await client.eject_media() is True
        assert await client.eject_media() is False
    assert bmc.bodies("POST", "InsertMedia") == [{"Image": url, "Inserted": True, "WriteProtected": True}]
    assert bmc.bodies("POST", "EjectMedia") == [{}]


async def test_insert_replaces_other_media_first() -> None:
    bmc = FakeBmc("lenovo-xcc")
    bmc.docs["/redfish/v1/Managers/1/VirtualMedia/EXT1"].update(Image="http://old/x.iso", Inserted=True)
    async with bmc.client() as client:
        await client.insert_media("http://new/y.iso")
    assert [r.url.path.rsplit(".", 1)[-1] for r in bmc.sent("POST", "Media")] == ["EjectMedia", "InsertMedia"]


async def test_a_refused_insert_carries_the_bmc_message() -> None:
    def refuse(fake: FakeBmc, request: httpx.Request, body: Any) -> httpx.Response | None:
        if request.url.path.endswith("InsertMedia"):
            message = "Unable to locate the ISO or IMG image file or folder in the network share location."
            return error(500, message, "IDRAC.2.8.RAC0720")
        return None

    bmc = FakeBmc("dell-idrac9", rules=[refuse])
    async with bmc.client() as client:
        with pytest.raises(RedfishError) as caught:
            await client.insert_media("http://192.0.2.1/missing.iso")
    assert "VirtualMedia/1/Actions/VirtualMedia.InsertMedia" in caught.value.message
    assert "HTTP 500: Unable to locate the ISO" in caught.value.message


async def test_media_kinds_and_missing_devices_are_named() -> None:
    async with FakeBmc("hpe-ilo5").client() as client:
        assert (await client.find_virtual_media("cd")).id == "2"
        assert (await client.find_virtual_media("usb")).id == "1"
        with pytest.raises(ValueError, match="unknown virtual media kind"):
            await client.find_virtual_media("tape")
    bmc = FakeBmc("lenovo-sd530")
    async with bmc.client() as client:
        with pytest.raises(RedfishError, match=r"has no usb virtual media device; it has: EXT1 \(CD/DVD\)"):
            await client.find_virtual_media("usb")


async def test_report_says_what_the_bmc_offers() -> None:
    async with FakeBmc("dell-idrac9").client() as client:
        facts = await client.report()
    assert facts["vendor"] == "Dell Inc." and facts["model"] == "PowerEdge R650"
    assert facts["firmware"] == "6.10.30.00" and facts["quirks"] == "dell-idrac"
    assert facts["boot_modes"] == ["UEFI", "Legacy"] and facts["virtual_media"] == ["cd", "usb"]
    assert facts["secure_boot"].enabled is False and facts["auth"] == "session"
    assert "PowerCycle" in facts["reset_types"]


# -- transport failures (real sockets on loopback) ---------------------------------------------------


def _info(address: str, timeout: float = 1.0) -> RedfishInfo:
    return parse_driver_info(
        {
            "redfish_address": address,
            "redfish_username": USER,
            "redfish_password": PASSWORD,
            "redfish_timeout": timeout,
            "redfish_verify_ca": False,
        }
    )


async def test_unreachable_address_is_a_named_error() -> None:
    # A port nothing listens on: bind one, close it, connect to it.
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    with pytest.raises(RedfishError, match=rf"cannot connect to the BMC at https://127.0.0.1:{port}"):
        async with RedfishClient(_info(f"https://127.0.0.1:{port}")):
            pass


async def test_a_bmc_that_never_answers_times_out_and_others_proceed() -> None:
    held: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)  # accept, read nothing, answer nothing

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    good = FakeBmc("dell-idrac9")

    async def hung() -> float:
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(RedfishError, match=r"no answer within 0.5 s"):
            async with RedfishClient(_info(f"https://127.0.0.1:{port}", timeout=0.5)):
                pass
        return loop.time() - started

    async def answering() -> str | None:
        async with good.client() as client:
            return await client.power_state()

    try:
        took, state = await asyncio.gather(hung(), answering())
    finally:
        for w in held:
            w.close()
        server.close()
        await server.wait_closed()
    assert state == "Off"
    assert 0.4 < took < 5.0  # the hung BMC did not hold the other one up (generous for load)
