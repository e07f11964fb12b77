"""openstacksdk's baremetal proxy, unmodified, against a live `bootforge serve` on loopback."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from support.service import Served, served

openstack = pytest.importorskip("openstack", reason="needs openstacksdk")
from openstack import connection, exceptions  # noqa: E402

MAC = "52:54:00:ab:cd:01"

# openstacksdk warns about its own internals (InfluxDB support, _compute_attributes) on every call.
pytestmark = [
    pytest.mark.filterwarnings("ignore::openstack.warnings.RemovedInSDK50Warning"),
    pytest.mark.filterwarnings("ignore::openstack.warnings.RemovedInSDK60Warning"),
]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """One service for the module: each test uses its own node names."""
    yield from served(tmp_path_factory.mktemp("openstacksdk"))


def connect(server: Served, **extra: Any) -> Any:
    # No status-code retries: openstacksdk retries every 409 five times with back-off (~15 s).
    conn = connection.Connection(
        auth_type="none",
        baremetal_endpoint_override=server.url,
        baremetal_status_code_retries="0",
        **extra,
    )
    return conn.baremetal


def wait_for(bm: Any, ident: str, **expected: str) -> Any:
    deadline = time.monotonic() + 30
    node = None
    while time.monotonic() < deadline:
        node = bm.get_node(ident)
        idle = node.reservation is None and node.target_power_state is None
        if idle and all(getattr(node, k) == v for k, v in expected.items()):
            return node
        time.sleep(0.05)
    raise AssertionError(f"node {ident} did not reach {expected}: {node}")


def test_node_lifecycle(server: Served) -> None:
    bm = connect(server)
    node = bm.create_node(driver="fake-hardware", name="sdk-1", driver_info={"ipmi_password": "hunter2"})
    assert node.provision_state == "enroll"
    assert node.driver_info == {"ipmi_password": "******"}
    port = bm.create_port(node_uuid=node.id, address=MAC)
    assert port.address == MAC
    assert [p.address for p in bm.ports(node=node.id)] == [MAC]

    node = bm.set_node_provision_state(node, "manage", wait=True, timeout=60)
    assert node.provision_state == "manageable"
    bm.set_node_provision_state(node, "provide")
    wait_for(bm, node.id, provision_state="available")
    node = bm.set_node_provision_state(node, "active", wait=True, timeout=60)
    assert node.provision_state == "active"
    assert bm.get_node(node.id).power_state == "power on"

    bm.set_node_power_state(node, "power off")
    wait_for(bm, node.id, power_state="power off")
    bm.set_node_power_state(node, "power on")
    wait_for(bm, node.id, power_state="power on")

    bm.set_node_boot_device(node, "pxe", persistent=True)
    assert bm.get_node_boot_device(node) == {"boot_device": "pxe", "persistent": True}

    bm.set_node_provision_state(node, "deleted")
    node = wait_for(bm, node.id, provision_state="available")
    assert node.power_state == "power off"
    bm.delete_node(node)
    assert node.id not in {n.id for n in bm.nodes()}
    assert MAC not in {p.address for p in bm.ports()}


def test_error_messages(server: Served) -> None:
    bm = connect(server)
    node = bm.create_node(driver="fake-hardware", name="sdk-err")

    with pytest.raises(exceptions.BadRequestException) as read_only:
        bm.patch_node(node, [{"op": "replace", "path": "/provision_state", "value": "active"}])
    assert "'/provision_state'" in str(read_only.value) and "read-only" in str(read_only.value)

    with pytest.raises(exceptions.BadRequestException) as missing_key:
        bm.patch_node(node, [{"op": "remove", "path": "/properties/no_such_key"}])
    assert "no_such_key" in str(missing_key.value)

    with pytest.raises(exceptions.HttpException) as wrong_state:
        bm.set_node_provision_state(node, "active")
    assert '"active"' in str(wrong_state.value) and '"enroll"' in str(wrong_state.value)

    bm.set_node_provision_state(node, "manage", wait=True, timeout=60)
    bm.set_node_provision_state(node, "provide")
    wait_for(bm, node.id, provision_state="available")
    bm.set_node_provision_state(node, "active")
    wait_for(bm, node.id, provision_state="active")
    with pytest.raises(exceptions.ConflictException) as in_use:
        bm.delete_node(node)
    assert 'provision state "active"' in str(in_use.value)

    with pytest.raises(exceptions.BadRequestException) as bad_mac:
        bm.create_port(node_uuid=node.id, address="52:54:00:zz:00:01")
    assert "52:54:00:zz:00:01" in str(bad_mac.value)

    # The proxy is built (and the version negotiated) on first use.
    with pytest.raises(exceptions.ConfigException) as too_new:
        list(connect(server, baremetal_api_version="1.99").nodes())
    assert "1.99" in str(too_new.value) and "1.1" in str(too_new.value) and "1.78" in str(too_new.value)
