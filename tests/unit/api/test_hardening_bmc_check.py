"""Issue #11 finding 9, for GET /v1/nodes/{ident}/bmc: a driver that quotes what it sent has every
secret of driver_info taken out of its answer, by the same rule as the node's own masking (secrets
inside lists, keys such as ipmi_credentials or snmp_auth_key)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from support.service import InProcess, in_process

from bootforge.drivers import base, fake, hardware
from bootforge.drivers.base import Task

TEST_TYPE = "quoting-test-hardware"
SECRETS = ("list-pw-1", "creds-pw-2", "snmp-key-3", "kg-key-4")


def _leaves(value: Any) -> list[str]:
    if isinstance(value, dict):
        return [x for v in value.values() for x in _leaves(v)]
    if isinstance(value, list):
        return [x for v in value for x in _leaves(v)]
    return [str(value)]


class QuotingManagement(fake.FakeManagement):
    async def bmc_report(self, task: Task) -> base.BmcReport:
        # A careless driver quoting every value it sent, in its message and its extra data.
        sent = _leaves(task.node.driver_info)
        return base.BmcReport(False, "sent " + " ".join(sent), extra={"sent": sent})


def _hardware() -> hardware.HardwareType:
    hw = hardware.HARDWARE_TYPES["fake-hardware"]()
    interfaces = dict(hw.interfaces)
    interfaces["management"] = [("fake", lambda s: QuotingManagement(s.fake_delays))]
    return hardware.HardwareType(TEST_TYPE, "test only: bmc_report quotes driver_info", interfaces)


@pytest.fixture
async def bfq(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[InProcess]:
    monkeypatch.setitem(hardware.HARDWARE_TYPES, TEST_TYPE, _hardware)
    async for x in in_process(tmp_path, enabled_hardware_types=["fake-hardware", TEST_TYPE]):
        yield x


async def test_secrets_in_lists_and_credential_keys_never_leave_in_the_bmc_check(bfq: InProcess) -> None:
    info = {
        "bmcs": [{"address": "192.0.2.1", "password": SECRETS[0]}],
        "ipmi_credentials": {"user": "admin", "pass": SECRETS[1]},
        "snmp_auth_key": SECRETS[2],
        "ipmi_kg": SECRETS[3],
    }
    r = await bfq.client.post("/v1/nodes", json={"driver": TEST_TYPE, "name": "q", "driver_info": info})
    assert r.status_code == 201, r.text
    r = await bfq.client.get("/v1/nodes/q/bmc")
    assert r.status_code == 200, r.text
    for secret in SECRETS:
        assert secret not in r.text
    assert "192.0.2.1" in r.json()["detail"]  # what is not secret stays readable
