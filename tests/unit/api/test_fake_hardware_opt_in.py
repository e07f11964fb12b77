"""fake-hardware pretends to power on and deploy: only a conductor whose settings list it enrols fakes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from apihelp import fault
from support.service import InProcess, in_process

from bootforge.config import Settings
from bootforge.drivers.hardware import Drivers


def test_the_default_settings_leave_fake_hardware_off() -> None:
    assert "fake-hardware" not in Settings().enabled_hardware_types
    assert "fake-hardware" not in Drivers(Settings()).types


@pytest.fixture
async def production(tmp_path: Path) -> AsyncIterator[InProcess]:
    # What `bootforge serve` runs with when nothing enables a type: the defaults.
    async for x in in_process(tmp_path, enabled_hardware_types=Settings().enabled_hardware_types):
        yield x


async def test_enrolling_a_fake_node_on_a_default_conductor_is_a_400_naming_driver(
    production: InProcess,
) -> None:
    r = await production.client.post("/v1/nodes", json={"driver": "fake-hardware", "name": "n1"})
    assert r.status_code == 400, r.text
    text = fault(r)
    assert text.startswith("Invalid driver:") and "fake-hardware" in text
    for enabled in ("ipmi", "qemu", "redfish"):
        assert enabled in text
    listed = await production.client.get("/v1/nodes")
    assert listed.json()["nodes"] == []
    drivers = (await production.client.get("/v1/drivers")).json()["drivers"]
    assert "fake-hardware" not in {d["name"] for d in drivers}


async def test_a_patch_to_a_disabled_type_is_refused_too(production: InProcess) -> None:
    r = await production.client.post("/v1/nodes", json={"driver": "qemu", "name": "n1"})
    assert r.status_code == 201, r.text
    patch = [{"op": "replace", "path": "/driver", "value": "fake-hardware"}]
    r = await production.client.patch("/v1/nodes/n1", json=patch)
    assert r.status_code == 400, r.text
    assert "Enabled hardware types: ipmi, qemu, redfish" in r.text


async def test_fake_hardware_enrols_when_the_settings_enable_it(tmp_path: Path) -> None:
    async for bf in in_process(tmp_path, enabled_hardware_types=["fake-hardware"]):
        r = await bf.client.post("/v1/nodes", json={"driver": "fake-hardware", "name": "n1"})
        assert r.status_code == 201, r.text
