"""Issue #11 finding 2: the agent session is bound to what a stranger on the provisioning network lacks.

The stranger's attack, as the review ran it: on an http_basic instance, GET /v1/lookup with only the
MAC of a node waiting for its agent, no credentials, gave the agent token (and the real agent a 409).
Now a lookup needs the per-boot token of the node's boot configuration (bootforge.boot_token=), and
with bootforge's own DHCP in full mode it must come from the address leased to the node's MAC.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import bcrypt
import httpx
import pytest
from apihelp import Api, api_with, fault
from sqlalchemy import insert

from bootforge import boot_token
from bootforge.api.app import create_app
from bootforge.api.auth import Htpasswd
from bootforge.conductor.agent import LOOKUP_REFUSED
from bootforge.db.models import Lease, utcnow

MAC = "52:54:00:aa:dd:01"
AGENT = {"boot_interface": "pxe", "deploy_interface": "direct", "inspect_interface": "agent"}
STRANGER = ("10.77.0.66", 40000)
LEASED = "10.77.0.201"
HEADER = "X-Agent-Boot-Token"
FULL_DHCP = {
    "address": "10.77.0.1",
    "dhcp": "full",
    "dhcp_interfaces": ["br0"],
    "subnets": [{"network": "10.77.0.0/24", "pool": "10.77.0.200-10.77.0.250"}],
}


def ramdisk_files(tmp_path: Path) -> None:
    ramdisk = tmp_path / "state" / "boot" / "bootforge"
    ramdisk.mkdir(parents=True)
    (ramdisk / "vmlinuz").write_bytes(b"kernel")
    (ramdisk / "initrd").write_bytes(b"initrd")


@pytest.fixture
async def agent_api(tmp_path: Path) -> AsyncIterator[Api]:
    ramdisk_files(tmp_path)
    async for api in api_with(tmp_path, agent={"lldp_wait": 0}):
        yield api


@pytest.fixture
async def full_dhcp_api(tmp_path: Path) -> AsyncIterator[Api]:
    ramdisk_files(tmp_path)
    async for api in api_with(tmp_path, agent={"lldp_wait": 0}, netboot=FULL_DHCP):
        yield api


def client_at(api: Api, address: tuple[str, int], tmp_path: Path | None = None) -> httpx.AsyncClient:
    """A client on the provisioning network at `address`; over an http_basic app if tmp_path is given."""
    htpasswd = None
    if tmp_path is not None:
        digest = bcrypt.hashpw(b"operator secret", bcrypt.gensalt(rounds=4)).decode()
        (tmp_path / "htpasswd").write_text(f"admin:{digest}\n")
        htpasswd = Htpasswd(tmp_path / "htpasswd")
    app = create_app(api.bf.services, htpasswd)
    transport = httpx.ASGITransport(app=app, client=address)
    return httpx.AsyncClient(transport=transport, base_url="http://localhost")


async def waiting(api: Api) -> tuple[str, str]:
    """A node in inspect wait (its ramdisk boot prepared) and the boot token its boot script carries."""
    node = await api.node(**AGENT)
    await api.port(node["uuid"], MAC)
    shown = await api.drive(node["uuid"], "manage", "inspect")
    assert shown["provision_state"] == "inspect wait"
    boot = shown["driver_internal_info"]["agent_boot"]
    return node["uuid"], boot_token.for_boot(api.bf.settings.secret_key_path, node["uuid"], boot)


async def events(api: Api, node: str) -> list[str]:
    history = (await api.c.get(f"/v1/nodes/{node}/history")).json()["history"]
    return [str(e["event"]) for e in history]


async def test_a_stranger_with_only_the_mac_gets_no_token_and_the_agent_still_gets_its_own(
    agent_api: Api, tmp_path: Path
) -> None:
    api = agent_api
    node, token = await waiting(api)
    async with client_at(api, STRANGER, tmp_path) as stranger:
        # The review's takeover: no credentials, the MAC only.
        r = await stranger.get("/v1/lookup", params={"addresses": MAC})
        assert r.status_code == 404, r.text
        assert fault(r) == LOOKUP_REFUSED
        # Nothing was issued: the real agent, with the token from its boot configuration, gets it.
        agent = await api.c.get("/v1/lookup", params={"addresses": MAC}, headers={HEADER: token})
        assert agent.status_code == 200, agent.text
        # Afterwards a stranger cannot even learn that the node is in its ramdisk: no 409 without it.
        again = await stranger.get("/v1/lookup", params={"addresses": MAC, "node_uuid": node})
        assert again.status_code == 404 and fault(again) == LOOKUP_REFUSED
    # With the token, the second lookup of the same boot is the 409 it always was.
    second = await api.c.get("/v1/lookup", params={"addresses": MAC}, headers={HEADER: token})
    assert second.status_code == 409 and "already issued" in fault(second)
    assert any("refused: it sent no boot token" in e for e in await events(api, node))


@pytest.mark.parametrize(
    "given",
    [
        "0" * 64,
        "not hex at all",
        "x" * 5000,
        # The token of another boot of the same node (an earlier ramdisk's, say).
        "other-boot",
    ],
)
async def test_a_wrong_boot_token_is_refused_like_any_other_lookup(agent_api: Api, given: str) -> None:
    api = agent_api
    node, _ = await waiting(api)
    if given == "other-boot":
        given = boot_token.for_boot(api.bf.settings.secret_key_path, node, "an-earlier-boot")
    r = await api.c.get("/v1/lookup", params={"addresses": MAC}, headers={HEADER: given})
    assert r.status_code == 404 and fault(r) == LOOKUP_REFUSED
    assert any("refused: its boot token is wrong" in e for e in await events(api, node))


async def test_refusals_reach_the_timeline_once_per_reason_however_often_a_stranger_asks(
    agent_api: Api,
) -> None:
    api = agent_api
    node, _ = await waiting(api)
    for _ in range(20):
        r = await api.c.get("/v1/lookup", params={"addresses": MAC}, headers={HEADER: "f" * 64})
        assert r.status_code == 404
    assert sum("boot token is wrong" in e for e in await events(api, node)) == 1


async def test_the_token_requirement_can_be_turned_off_for_old_ramdisks(tmp_path: Path) -> None:
    ramdisk_files(tmp_path)
    async for api in api_with(tmp_path, agent={"lldp_wait": 0, "require_boot_token": False}):
        await waiting(api)
        r = await api.c.get("/v1/lookup", params={"addresses": MAC})
        assert r.status_code == 200, r.text


async def add_lease(api: Api, ip: str, mac: str, state: str = "bound", ttl: float = 3600.0) -> None:
    async with api.bf.services.conductor.db.write() as s:
        row = {"ip": ip, "mac": mac, "state": state, "expires": time.time() + ttl, "updated_at": utcnow()}
        await s.execute(insert(Lease).values(node_uuid=None, **row))
        await s.commit()


async def test_with_full_dhcp_the_lookup_is_only_accepted_from_the_leased_address(
    full_dhcp_api: Api,
) -> None:
    api = full_dhcp_api
    node, token = await waiting(api)
    await add_lease(api, LEASED, MAC)
    # Another MAC's lease, and an expired one of this MAC, bind nothing.
    await add_lease(api, "10.77.0.202", "52:54:00:ff:ff:ff")
    await add_lease(api, "10.77.0.203", MAC, ttl=-10)
    for where in (STRANGER, ("10.77.0.202", 1), ("10.77.0.203", 1)):
        async with client_at(api, where) as c:
            r = await c.get("/v1/lookup", params={"addresses": MAC}, headers={HEADER: token})
            assert r.status_code == 404 and fault(r) == LOOKUP_REFUSED, where
    assert any("not the address bootforge's DHCP leased" in e for e in await events(api, node))
    async with client_at(api, (LEASED, 5000)) as agent:
        r = await agent.get("/v1/lookup", params={"addresses": MAC}, headers={HEADER: token})
        assert r.status_code == 200, r.text


async def test_with_full_dhcp_a_network_booted_node_without_a_lease_is_refused(
    full_dhcp_api: Api,
) -> None:
    api = full_dhcp_api
    node, token = await waiting(api)
    async with client_at(api, (LEASED, 5000)) as c:
        r = await c.get("/v1/lookup", params={"addresses": MAC}, headers={HEADER: token})
    assert r.status_code == 404 and fault(r) == LOOKUP_REFUSED
    assert any("no current DHCP lease" in e for e in await events(api, node))


def test_the_token_is_bound_to_node_boot_and_key(tmp_path: Path) -> None:
    key = tmp_path / "k" / "secret.key"
    other = tmp_path / "other" / "secret.key"
    a = boot_token.for_boot(key, "node-1", "boot-1")
    assert a == boot_token.for_boot(key, "node-1", "boot-1")
    assert len(a) == 64 and set(a) <= set("0123456789abcdef")
    assert (
        len({a, boot_token.for_boot(key, "node-2", "boot-1"), boot_token.for_boot(key, "node-1", "boot-2")})
        == 3
    )
    assert boot_token.for_boot(other, "node-1", "boot-1") != a
    # No plaintext anywhere: the token is not stored, it is recomputed from the key file.
    assert boot_token.matches(a, a) and not boot_token.matches(a, None) and not boot_token.matches(a, a[:-1])


async def test_saving_a_new_boot_id_refreshes_the_netboot_view_at_once(agent_api: Api) -> None:
    """The machine is powered on right after the save: its script must carry the new boot's token
    without waiting for the view's periodic refresh."""
    from bootforge.conductor.task import NodeTask, load_node

    api = agent_api
    node = await api.node(**AGENT)
    conductor = api.bf.services.conductor
    told: list[str] = []
    conductor.state_listeners.append(lambda: told.append("refresh"))
    task = NodeTask(conductor, await load_node(conductor, node["uuid"]), None, "test")
    task.set_internal(agent_command=None)
    await task.save()
    assert told == []
    task.set_internal(agent_boot="boot-1")
    await task.save()
    assert told == ["refresh"]
    await task.save()
    task.set_internal(agent_boot="boot-1")
    await task.save()
    assert told == ["refresh"]


async def test_with_full_dhcp_an_ipv6_lookup_rests_on_the_boot_token(full_dhcp_api: Api) -> None:
    """Dual stack: a ramdisk that booted over IPv6 looks up from its own SLAAC address, which no
    DHCP server leased; the boot token decides (an IPv4-mapped address is still IPv4)."""
    api = full_dhcp_api
    _node, token = await waiting(api)
    async with client_at(api, ("fd77::5054:ff:fe77:1", 5000)) as c:
        wrong = await c.get("/v1/lookup", params={"addresses": MAC}, headers={HEADER: "x" * 64})
        assert wrong.status_code == 404 and fault(wrong) == LOOKUP_REFUSED
        r = await c.get("/v1/lookup", params={"addresses": MAC}, headers={HEADER: token})
        assert r.status_code == 200, r.text
    async with client_at(api, ("::ffff:10.77.0.66", 5000)) as mapped:
        r = await mapped.get("/v1/lookup", params={"addresses": MAC}, headers={HEADER: token})
        assert r.status_code == 404 and fault(r) == LOOKUP_REFUSED
