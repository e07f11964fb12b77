"""The agent's discovery mode and the BMC address it reports (ipmitool's lan print, the SMBIOS Redfish
host interface); the report's retries against a fake client."""

from __future__ import annotations

import socket
import struct
from pathlib import Path
from typing import Any

from bootforge.agent import discover, inspect
from bootforge.agent.client import Conflict, ServerError, TransportError

LAN_PRINT = """Set in Progress         : Set Complete
Auth Type Support       : NONE MD2 MD5 PASSWORD
IP Address Source       : Static Address
IP Address              : 10.20.30.40
Subnet Mask             : 255.255.255.0
MAC Address             : 00:25:90:aa:bb:cc
Default Gateway IP      : 10.20.30.1
"""


def test_lan_print_address() -> None:
    assert inspect.parse_lan_print(LAN_PRINT) == "10.20.30.40"
    assert inspect.parse_lan_print(LAN_PRINT.replace("10.20.30.40", "0.0.0.0")) is None
    assert inspect.parse_lan_print("IP Address Source : DHCP\n") is None
    assert inspect.parse_lan_print("IP Address : not-an-address\n") is None


def host_interface(service: bytes, fmt: int = 1) -> bytes:
    """An SMBIOS type 42 record with one Redfish-over-IP protocol record (DSP0270's layout)."""
    data = bytes(16) + bytes([1, 1]) + bytes(16) + bytes(16) + bytes([1, fmt]) + service.ljust(16, b"\0")
    data += bytes(16) + struct.pack("<H", 443) + bytes(4) + b"\0"
    protocols = bytes([1, 0x04, len(data)]) + data
    body = bytes([0x40, 3]) + b"\x01\x02\x03" + protocols
    return bytes([42, 4 + len(body), 0, 0]) + body


def test_redfish_host_interface(tmp_path: Path) -> None:
    assert inspect.parse_host_interface(host_interface(socket.inet_aton("169.254.0.1"))) == "169.254.0.1"
    v6 = socket.inet_pton(socket.AF_INET6, "fe80::1")
    assert inspect.parse_host_interface(host_interface(v6, fmt=2)) == "fe80::1"
    assert inspect.parse_host_interface(host_interface(bytes(4))) is None
    assert inspect.parse_host_interface(b"\x2a\x05\x00") is None
    entry = tmp_path / "sys/firmware/dmi/entries/42-0"
    entry.mkdir(parents=True)
    (entry / "raw").write_bytes(host_interface(socket.inet_aton("192.168.9.9")))
    assert inspect.bmc_address(str(tmp_path)) == "192.168.9.9"
    # A fake tree's IPMI device is not asked (ipmitool talks to the real machine only).
    (tmp_path / "dev").mkdir()
    (tmp_path / "dev/ipmi0").write_text("")
    assert inspect.bmc_address(str(tmp_path)) == "192.168.9.9"


class FakeClient:
    def __init__(self, answers: list[Any]) -> None:
        self.answers = answers
        self.calls = 0

    def call(self, method: str, path: str, body: Any = None, auth: bool = True) -> tuple[int, Any]:
        assert (method, path, auth) == ("POST", "/v1/discovery/report", False)
        self.calls += 1
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return 200, answer


def test_report_retries_busy_and_unreachable_then_stops_on_refusal() -> None:
    now = [0.0]
    slept: list[float] = []

    def sleep(s: float) -> None:
        slept.append(s)
        now[0] += s

    busy = ServerError("POST", "/v1/discovery/report", 429, "too many")
    down = TransportError("connection refused")
    client = FakeClient([busy, down, {"node": {"name": "n"}, "enrolled": True}])
    answer = discover.report(client, {}, sleep=sleep, clock=lambda: now[0])  # type: ignore[arg-type]
    assert answer == {"node": {"name": "n"}, "enrolled": True} and slept == [2.0, 4.0]
    refused = FakeClient([Conflict("POST", "/v1/discovery/report", 409, "known")])
    assert discover.report(refused, {}, sleep=sleep, clock=lambda: now[0]) is None  # type: ignore[arg-type]
    always = FakeClient([down] * 100)
    assert discover.report(always, {}, deadline=60, sleep=sleep, clock=lambda: now[0]) is None  # type: ignore[arg-type]
    assert always.calls < 10
