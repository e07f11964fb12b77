"""driver_info of the redfish hardware type: parsed without a BMC, every error names its key."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import pytest

from bootforge.drivers.redfish import parse_driver_info
from bootforge.errors import InvalidInput

BASE = {"redfish_address": "10.0.0.5", "redfish_username": "admin", "redfish_password": "pw-secret"}


def test_defaults() -> None:
    info = parse_driver_info(BASE)
    assert info.address == "https://10.0.0.5"
    assert (info.system_id, info.verify_ca, info.auth_type, info.timeout) == (None, True, "auto", 20.0)
    assert "pw-secret" not in repr(info)
    assert isinstance(info.ssl_context(), ssl.SSLContext)


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("https://bmc.example:8443/", "https://bmc.example:8443"),
        ("http://10.0.0.5", "http://10.0.0.5"),
        ("[fd00::5]:443", "https://[fd00::5]:443"),
        (" bmc ", "https://bmc"),
    ],
)
def test_addresses(address: str, expected: str) -> None:
    assert parse_driver_info({**BASE, "redfish_address": address}).address == expected


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"redfish_address": ""}, "redfish_address is required"),
        ({"redfish_address": "ftp://bmc"}, "redfish_address must be an http"),
        ({"redfish_address": "https://u:p@bmc"}, "redfish_address must not carry credentials"),
        ({"redfish_address": "https://bmc/redfish/v1"}, "redfish_address must be scheme://host"),
        ({"redfish_address": "https://bmc:99999"}, "redfish_address is not a valid URL"),
        ({"redfish_username": None}, "redfish_username is required"),
        ({"redfish_password": 5}, "redfish_password must be a string"),
        ({"redfish_system_id": "/redfish/v1/Chassis/1"}, "redfish_system_id must be a path under"),
        ({"redfish_system_id": "a/b"}, "redfish_system_id must be a system Id"),
        ({"redfish_verify_ca": "/nonexistent/ca.pem"}, "redfish_verify_ca names no file"),
        ({"redfish_verify_ca": 3}, "redfish_verify_ca must be true, false"),
        ({"redfish_auth_type": "digest"}, "redfish_auth_type must be auto, session or basic"),
        ({"redfish_timeout": "soon"}, "redfish_timeout must be a number"),
        ({"redfish_timeout": 0}, "redfish_timeout must be between"),
    ],
)
def test_errors_name_the_key(change: dict[str, Any], key: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_driver_info({**BASE, **change})
    assert key in caught.value.message
    assert caught.value.field == "driver_info"
    assert "pw-secret" not in caught.value.message


def test_verify_ca_forms(tmp_path: Path) -> None:
    assert parse_driver_info({**BASE, "redfish_verify_ca": "false"}).verify_ca is False
    assert parse_driver_info({**BASE, "redfish_verify_ca": False}).ssl_context() is False
    assert parse_driver_info({**BASE, "redfish_verify_ca": "True"}).verify_ca is True
    assert parse_driver_info({**BASE, "redfish_verify_ca": str(tmp_path)}).verify_ca == str(tmp_path)


def test_system_id_forms() -> None:
    assert parse_driver_info({**BASE, "redfish_system_id": "1"}).system_id == "/redfish/v1/Systems/1"
    path = "/redfish/v1/Systems/System.Embedded.1/"
    assert parse_driver_info({**BASE, "redfish_system_id": path}).system_id == path.rstrip("/")
