"""Helpers for the in-process API tests: `Api` wraps `bf` with the calls every test repeats."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from support.service import InProcess, in_process


def fault(r: httpx.Response) -> str:
    """The message a user reads: Ironic's faultstring, decoded from the JSON string in error_message."""
    return str(json.loads(r.json()["error_message"])["faultstring"])


@dataclass
class Api:
    bf: InProcess

    @property
    def c(self) -> httpx.AsyncClient:
        return self.bf.client

    async def node(self, **body: Any) -> dict[str, Any]:
        r = await self.c.post("/v1/nodes", json={"driver": "fake-hardware", **body})
        assert r.status_code == 201, r.text
        node: dict[str, Any] = r.json()
        return node

    async def get(self, ident: str) -> dict[str, Any]:
        r = await self.c.get(f"/v1/nodes/{ident}")
        assert r.status_code == 200, r.text
        node: dict[str, Any] = r.json()
        return node

    async def verb(self, ident: str, target: str, **body: Any) -> httpx.Response:
        return await self.c.put(f"/v1/nodes/{ident}/states/provision", json={"target": target, **body})

    async def drive(self, ident: str, *verbs: str) -> dict[str, Any]:
        """Apply each verb and let the background work finish; returns the node afterwards."""
        for verb in verbs:
            r = await self.verb(ident, verb)
            assert r.status_code == 202, f"{verb}: {r.text}"
            await self.bf.conductor.wait_idle()
        return await self.get(ident)

    async def available(self, **body: Any) -> dict[str, Any]:
        node = await self.node(**body)
        return await self.drive(node["uuid"], "manage", "provide")

    async def port(self, node_uuid: str, address: str, **body: Any) -> dict[str, Any]:
        r = await self.c.post("/v1/ports", json={"node_uuid": node_uuid, "address": address, **body})
        assert r.status_code == 201, r.text
        port: dict[str, Any] = r.json()
        return port


async def boot_token_header(api: Api, node_uuid: str) -> dict[str, str]:
    """The lookup header the node's ramdisk sends: the token of its current boot, as its boot script
    carries it (bootforge.boot_token=), computed from the key file like the conductor does."""
    from bootforge import boot_token

    boot = (await api.get(node_uuid))["driver_internal_info"].get("agent_boot")
    assert boot, f"node {node_uuid} has no ramdisk boot"
    return {boot_token.HEADER: boot_token.for_boot(api.bf.settings.secret_key_path, node_uuid, boot)}


async def api_with(tmp_path: Path, **overrides: Any) -> AsyncIterator[Api]:
    """An `api` over a bootforge with non-default settings (e.g. fake delays)."""
    async for bf in in_process(tmp_path, **overrides):
        yield Api(bf)
