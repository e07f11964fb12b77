"""ipmi driver_info parsing, boot-mode choice, cipher-suite negotiation rules and the SOL log: no BMC."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bootforge.config import Settings
from bootforge.drivers import base, ipmi
from bootforge.drivers.hardware import Drivers
from bootforge.errors import InvalidInput


class FakeNode:
    def __init__(self, driver_info: dict[str, Any], **over: Any) -> None:
        self.driver_info = driver_info
        self.driver_internal_info: dict[str, Any] = over.get("internal", {})
        self.properties: dict[str, Any] = over.get("properties", {})
        self.boot_mode: str | None = over.get("boot_mode")


class FakeTask:
    def __init__(self, driver_info: dict[str, Any], **over: Any) -> None:
        self.node = FakeNode(driver_info, **over)


def test_defaults() -> None:
    info = ipmi.parse_driver_info({"ipmi_address": "10.0.0.5"})
    assert info == ipmi.IpmiInfo("10.0.0.5", 623, "", "", (17, 3), None)
    assert info.target == "10.0.0.5:623"
    assert ipmi.IpmiInfo("fd00::5", 6230).target == "[fd00::5]:6230"


def test_every_key() -> None:
    info = ipmi.parse_driver_info(
        {
            "ipmi_address": " bmc1.example ",
            "ipmi_port": "6230",
            "ipmi_username": "admin",
            "ipmi_password": "pw",
            "ipmi_cipher_suite": "3",
            "ipmi_priv_level": "operator",
            "deploy_kernel": "other interfaces' keys are not ours to judge",
        }
    )
    assert info == ipmi.IpmiInfo("bmc1.example", 6230, "admin", "pw", (3,), "OPERATOR")
    assert "pw" not in repr(info)
    assert ipmi.parse_driver_info({"ipmi_address": "a", "ipmi_cipher_suite": 17}).cipher_suites == (17,)


@pytest.mark.parametrize(
    ("info", "key"),
    [
        ({}, "ipmi_address"),
        ({"ipmi_address": ""}, "ipmi_address"),
        ({"ipmi_address": "10.0.0.5 6230"}, "ipmi_address"),
        ({"ipmi_address": 10}, "ipmi_address"),
        ({"ipmi_address": "a", "ipmi_port": 0}, "ipmi_port"),
        ({"ipmi_address": "a", "ipmi_port": 70000}, "ipmi_port"),
        ({"ipmi_address": "a", "ipmi_port": "623x"}, "ipmi_port"),
        ({"ipmi_address": "a", "ipmi_port": True}, "ipmi_port"),
        ({"ipmi_address": "a", "ipmi_username": "u" * 17}, "ipmi_username"),
        ({"ipmi_address": "a", "ipmi_username": 5}, "ipmi_username"),
        ({"ipmi_address": "a", "ipmi_cipher_suite": 1}, "ipmi_cipher_suite"),
        ({"ipmi_address": "a", "ipmi_cipher_suite": "seventeen"}, "ipmi_cipher_suite"),
        ({"ipmi_address": "a", "ipmi_priv_level": "ROOT"}, "ipmi_priv_level"),
        ({"ipmi_address": "a", "ipmi_priv_level": 4}, "ipmi_priv_level"),
    ],
)
def test_validate_names_the_bad_key(info: dict[str, Any], key: str) -> None:
    settings = Settings(enabled_hardware_types=["ipmi"])
    for iface in (ipmi.IpmiPower(settings), ipmi.IpmiManagement(settings), ipmi.IpmiConsole(settings)):
        with pytest.raises(InvalidInput) as e:
            iface.validate(FakeTask(info))  # type: ignore[arg-type]
        assert e.value.message.startswith(f"ipmi driver_info {key} ")
        assert e.value.field == "driver_info"


def test_a_bad_password_is_not_echoed() -> None:
    secret = "x" * 21 + "-secret"
    with pytest.raises(InvalidInput) as e:
        ipmi.parse_driver_info({"ipmi_address": "a", "ipmi_password": secret})
    assert "ipmi_password" in e.value.message
    assert "secret" not in e.value.message


def test_properties_and_registry() -> None:
    settings = Settings(enabled_hardware_types=["ipmi"])
    ds = Drivers(settings).for_node("ipmi", {})
    assert ds.power.get_properties() == ipmi.PROPERTIES
    assert set(ipmi.PROPERTIES) == {
        "ipmi_address",
        "ipmi_port",
        "ipmi_username",
        "ipmi_password",
        "ipmi_cipher_suite",
        "ipmi_priv_level",
    }
    assert ds.hardware_type.supported("console") == ["ipmitool-sol", "no-console"]
    assert ds.hardware_type.default("boot") == "pxe"  # the rest comes from GENERIC
    assert ds.power.get_supported_power_states(FakeTask({})) == [  # type: ignore[arg-type]
        base.POWER_ON,
        base.POWER_OFF,
        base.REBOOT,
        base.SOFT_POWER_OFF,
        base.SOFT_REBOOT,
    ]
    # Power, management and console of a node share one client: one lock and session per BMC.
    assert ds.power.client is ds.management.client is ds.interfaces["console"].client  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("over", "mode"),
    [
        ({}, "uefi"),
        ({"boot_mode": "bios"}, "bios"),
        ({"properties": {"capabilities": "secure_boot:false,boot_mode:bios"}}, "bios"),
        ({"properties": {"capabilities": {"boot_mode": "bios"}}}, "bios"),
        ({"boot_mode": "uefi", "properties": {"capabilities": "boot_mode:bios"}}, "uefi"),
        ({"boot_mode": "bios", "internal": {"ipmi_boot_mode": "uefi"}}, "uefi"),
    ],
)
def test_wanted_boot_mode(over: dict[str, Any], mode: str) -> None:
    assert ipmi.wanted_boot_mode(FakeTask({}, **over)) == mode  # type: ignore[arg-type]


class SessionUnderTest(ipmi._Session):
    """The cipher-suite rules of ipmi._Session, without pyghmi's network machinery."""

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        return object.__new__(cls)  # not pyghmi's: that one looks for a live session to share

    def __init__(self, suites: tuple[int, ...]) -> None:
        self.bf_suites, self.bf_index, self.bf_refused = suites, 0, []
        self.sessioncontext, self.rmcptag = "OPENSESSION", 7
        self.opened: list[int] = []
        self.logon: list[dict[str, Any]] = []
        self.parent: list[Any] = []

    def _open_rmcpplus_request(self) -> None:
        self.opened.append(self.cipher_suite)

    def onlogon(self, parameter: dict[str, Any]) -> None:
        self.logon.append(parameter)


def response(status: int, algos: tuple[int, int, int] = (1, 1, 1)) -> bytearray:
    data = bytearray(36)
    data[0], data[1] = 7, status
    for offset, algo in zip((16, 24, 32), algos, strict=True):
        data[offset] = algo
    return data


def test_suite_17_refused_falls_back_to_3(monkeypatch: pytest.MonkeyPatch) -> None:
    s = SessionUnderTest((17, 3))
    assert s._got_rmcp_response(response(0x11)) is None
    assert s.opened == [3] and s.logon == []
    assert s.bf_refused == ["cipher suite 17: No Cipher suite match with proposed security algorithms"]


def test_suite_17_answered_with_3s_algorithms_falls_back() -> None:
    s = SessionUnderTest((17, 3))
    s._got_rmcp_response(response(0, (1, 1, 1)))
    assert s.opened == [3]
    assert s.bf_refused == ["cipher suite 17: the BMC chose cipher suite 3 instead"]


def test_only_17_allowed_fails_with_the_reason() -> None:
    s = SessionUnderTest((17,))
    assert s._got_rmcp_response(response(0, (1, 1, 1))) == -9
    assert s.opened == []
    assert s.logon == [{"error": "cipher suite 17: the BMC chose cipher suite 3 instead"}]


def test_matching_answer_goes_on_to_rakp(monkeypatch: pytest.MonkeyPatch) -> None:
    s = SessionUnderTest((17, 3))
    seen: list[Any] = []
    monkeypatch.setattr(ipmi.pyghmi_session.Session, "_got_rmcp_response", lambda self, d: seen.append(d))
    data = response(0, (3, 4, 1))
    s._got_rmcp_response(data)
    assert seen == [data] and s.opened == [] and s.bf_refused == []


def test_sol_log_rotates(tmp_path: Path) -> None:
    path = tmp_path / "console" / "n1.log"
    log = ipmi._SolLog(path, max_bytes=100)
    log(b"a" * 60)
    log(b"b" * 30)
    assert path.read_bytes() == b"a" * 60 + b"b" * 30
    log(b"c" * 20)  # would pass 100 bytes: the log moves to n1.log.1 and starts again
    assert (tmp_path / "console" / "n1.log.1").read_bytes() == b"a" * 60 + b"b" * 30
    assert path.read_bytes() == b"c" * 20
    log({"error": "Session Disconnected"})
    assert log.error == "Session Disconnected"
    assert path.read_bytes().endswith(b"[bootforge: SOL error: Session Disconnected]\r\n")
    log.close()
    log(b"after close")  # late output from pyghmi's thread is dropped, not an exception
    assert b"after close" not in path.read_bytes()


def test_errors_never_carry_the_password() -> None:
    info = ipmi.IpmiInfo("10.0.0.5", password="hunter2")
    text = ipmi._describe(ValueError("bad hmac for hunter2"), info)
    assert text == "ValueError: bad hmac for ***"
    assert ipmi._describe(ipmi.pyghmi_exc.IpmiException(None), info) == (
        "no answer (pyghmi gave up after its retries)"
    )
