"""Boot-device classification and the bootindex plan (pure parts of the qemu management interface)."""

from __future__ import annotations

import pytest

from bootforge.drivers.qemu import BootDevice, classify_device, plan_order
from bootforge.errors import DriverError

NIC_PROPS = {"mac", "netdev", "bootindex", "romfile"}


@pytest.mark.parametrize(
    ("qom_type", "props", "kind"),
    [
        ("virtio-net-pci", NIC_PROPS, "pxe"),
        ("e1000", NIC_PROPS, "pxe"),
        ("virtio-blk-pci", {"drive", "bootindex"}, "disk"),
        ("ide-hd", {"drive", "bootindex"}, "disk"),
        ("scsi-hd", {"drive", "bootindex"}, "disk"),
        ("ide-cd", {"drive", "bootindex"}, "cdrom"),
        ("scsi-cd", {"drive", "bootindex"}, "cdrom"),
        ("vfio-pci", {"host", "bootindex"}, None),
    ],
)
def test_classify(qom_type: str, props: set[str], kind: str | None) -> None:
    assert classify_device(qom_type, props) == kind


def devs(*spec: tuple[str, str | None, int]) -> list[BootDevice]:
    return [BootDevice(f"/machine/peripheral/{name}", kind, index) for name, kind, index in spec]


def named(order: dict[str, int]) -> dict[str, int]:
    return {path.rsplit("/", 1)[1]: index for path, index in order.items()}


def test_requested_kind_first_everything_else_keeps_its_order() -> None:
    devices = devs(("disk0", "disk", 1), ("nic0", "pxe", 2), ("cd0", "cdrom", 3), ("nic1", "pxe", -1))
    assert named(plan_order(devices, "pxe")) == {"nic0": 1, "nic1": 2, "disk0": 3, "cd0": 4}
    assert named(plan_order(devices, "cdrom")) == {"cd0": 1, "disk0": 2, "nic0": 3, "nic1": 4}


def test_devices_outside_the_order_get_an_index_after_the_others() -> None:
    # QEMU started without any bootindex: OVMF would drop devices missing from bootorder.
    devices = devs(("nic0", "pxe", -1), ("disk0", "disk", -1), ("hostdev", None, -1))
    assert named(plan_order(devices, "disk")) == {"disk0": 1, "hostdev": 2, "nic0": 3}


def test_indices_are_unique_so_qemu_accepts_them() -> None:
    devices = devs(("a", "disk", 5), ("b", "disk", 0), ("c", "pxe", 9), ("d", None, 2))
    order = plan_order(devices, "pxe")
    assert sorted(order.values()) == [1, 2, 3, 4]
    assert named(order) == {"c": 1, "b": 2, "d": 3, "a": 4}


def test_missing_kind_names_what_the_vm_has() -> None:
    with pytest.raises(DriverError, match=r"no cdrom boot device.*disk0 \(disk\)"):
        plan_order(devs(("disk0", "disk", 1)), "cdrom")
    with pytest.raises(DriverError, match="bootable devices: none"):
        plan_order([], "pxe")


def test_pxe_puts_the_nics_of_the_nodes_pxe_ports_first() -> None:
    devices = [
        BootDevice("/machine/peripheral/nic0", "pxe", 1, "52:54:00:00:00:01"),
        BootDevice("/machine/peripheral/nic1", "pxe", 2, "52:54:00:00:00:02"),
        BootDevice("/machine/peripheral/disk0", "disk", 3),
    ]
    port = ["52:54:00:00:00:02"]
    assert named(plan_order(devices, "pxe", port)) == {"nic1": 1, "nic0": 2, "disk0": 3}
    assert named(plan_order(devices, "pxe", ["52:54:00:00:00:02".upper()])) == {
        "nic1": 1,
        "nic0": 2,
        "disk0": 3,
    }
    # No port MAC known, or another kind first: the old order of the NICs stays.
    assert named(plan_order(devices, "pxe")) == {"nic0": 1, "nic1": 2, "disk0": 3}
    assert named(plan_order(devices, "disk", port)) == {"disk0": 1, "nic0": 2, "nic1": 3}
