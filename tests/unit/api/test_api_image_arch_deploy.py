"""A deploy picks and refuses its image by the node's properties.cpu_arch, through the API and the
conductor (fake-hardware power, the agent's boot and deploy interfaces): a refusal fails the deploy
before the machine is powered or its boot device set."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from apihelp import Api, api_with

sys.path.insert(0, str(Path(__file__).parent.parent / "images"))
from esp_util import AA64, MISSING, NEEDS, X64, disk

pytestmark = pytest.mark.skipif(bool(MISSING), reason=NEEDS)
AGENT = {"boot_interface": "pxe", "deploy_interface": "direct", "inspect_interface": "agent"}


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    for sub in ("bootforge", "bootforge/arm64"):  # both architectures' ramdisks
        ramdisk = tmp_path / "state" / "boot" / sub
        ramdisk.mkdir(parents=True)
        (ramdisk / "vmlinuz").write_bytes(b"k")
        (ramdisk / "initrd").write_bytes(b"i")
    settings: dict[str, Any] = {"automated_clean": False, "netboot": {"address": "127.0.0.1", "http": True}}
    async for a in api_with(tmp_path, **settings):
        for name, files in (
            ("os", {"EFI/BOOT/BOOTX64.EFI": X64}),
            ("os-aarch64", {"EFI/BOOT/BOOTAA64.EFI": AA64}),
            ("arm-only", {"EFI/BOOT/BOOTAA64.EFI": AA64}),
        ):
            data = disk(tmp_path / f"{name}.raw", files).read_bytes()
            r = await a.c.put(f"/v1/images/{name}/file", content=data)
            assert r.status_code == 201, r.text
        yield a


async def deploy(api: Api, cpu_arch: str, image: str) -> dict[str, Any]:
    node = await api.available(name=f"n-{cpu_arch}-{image}", properties={"cpu_arch": cpu_arch}, **AGENT)
    patch = [{"op": "add", "path": "/instance_info/image_source", "value": image}]
    assert (await api.c.patch(f"/v1/nodes/{node['uuid']}", json=patch)).status_code == 200
    return await api.drive(node["uuid"], "active")


async def test_an_image_of_another_architecture_is_refused_untouched(api: Api) -> None:
    shown = await deploy(api, "x86_64", "arm-only")
    assert shown["provision_state"] == "deploy failed"
    error = shown["last_error"]
    assert "instance_info.image_source arm-only" in error, error
    assert "aarch64" in error and "properties.cpu_arch is x86_64" in error, error
    assert shown["power_state"] == "power off"  # never powered on into the ramdisk
    assert "agent_boot" not in shown["driver_internal_info"]


async def test_the_variant_of_the_nodes_architecture_is_deployed(api: Api) -> None:
    arm = await deploy(api, "aarch64", "os")
    assert arm["provision_state"] == "wait call-back", arm["last_error"]
    history = (await api.c.get(f"/v1/nodes/{arm['uuid']}/history")).json()["history"]
    assert any("image os (variant os-aarch64 for aarch64)" in e["event"] for e in history), history
    image = arm["driver_internal_info"]["deploy_image"]
    uuid = (await api.c.get("/v1/images/os-aarch64")).json()["uuid"]
    assert uuid in image["url"], image
    x86 = await deploy(api, "x86_64", "os")
    assert x86["provision_state"] == "wait call-back", x86["last_error"]
    assert (await api.c.get("/v1/images/os")).json()["uuid"] in x86["driver_internal_info"]["deploy_image"][
        "url"
    ]
