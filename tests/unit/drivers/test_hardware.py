"""Hardware types compose interfaces; steps are collected from decorated methods."""

import pytest

from bootforge.config import Settings
from bootforge.drivers import base
from bootforge.drivers.hardware import INTERFACE_TYPES, Drivers
from bootforge.errors import InvalidInput, NotFound

FAKE = Settings(enabled_hardware_types=["fake-hardware"])


def test_fake_hardware_defaults_to_fake_everywhere_it_can() -> None:
    drivers = Drivers(FAKE)
    ds = drivers.for_node("fake-hardware", {})
    assert set(ds.interfaces) == set(INTERFACE_TYPES)
    assert ds.power.name == "fake" and ds.deploy.name == "fake"
    assert ds.interfaces["network"].name == "noop"


def test_a_node_may_pick_another_supported_implementation() -> None:
    ds = Drivers(FAKE).for_node("fake-hardware", {"rescue": "no-rescue"})
    assert isinstance(ds.rescue, base.NoRescue)


def test_unsupported_implementation_names_the_field() -> None:
    with pytest.raises(InvalidInput) as info:
        Drivers(FAKE).for_node("fake-hardware", {"power": "ipmitool"})
    assert info.value.field == "power_interface"
    assert "ipmitool" in info.value.message and "fake" in info.value.message


def test_unknown_hardware_type() -> None:
    with pytest.raises(NotFound):
        Drivers(FAKE).for_node("no-such-type", {})
    with pytest.raises(ValueError, match="no-such-type"):
        Drivers(Settings(enabled_hardware_types=["no-such-type"]))


def test_instances_are_shared_per_implementation() -> None:
    drivers = Drivers(FAKE)
    a = drivers.for_node("fake-hardware", {})
    b = drivers.for_node("fake-hardware", {})
    assert a.power is b.power


def test_steps_are_collected_from_decorators() -> None:
    ds = Drivers(FAKE).for_node("fake-hardware", {})
    deploy_steps = {s.name: s for s in ds.deploy.steps("deploy")}
    clean_steps = {s.name: s for s in ds.deploy.steps("clean")}
    assert deploy_steps["deploy"].priority == 100
    assert clean_steps["erase_devices_metadata"].priority == 99
    assert ds.power.steps("deploy") == []


def test_subclass_inherits_and_extends_steps() -> None:
    class Custom(base.DeployInterface):
        name = "custom"

        def validate(self, task: base.Task) -> None:
            return None

        async def tear_down(self, task: base.Task) -> None:
            return None

        @base.deploy_step(priority=50, may_rerun=True)
        async def write_image(self, task: base.Task) -> base.StepResult:
            return base.WAIT

    class More(Custom):
        @base.deploy_step(priority=10, may_rerun=False)
        async def finish(self, task: base.Task) -> base.StepResult:
            return None

    assert {s.name for s in More().steps("deploy")} == {"write_image", "finish"}
    assert {s.name for s in Custom().steps("deploy")} == {"write_image"}


def test_a_hardware_type_names_only_what_it_changes() -> None:
    from bootforge.drivers.hardware import GENERIC, hardware_type

    def power(settings: Settings) -> base.BaseInterface:
        return Drivers(settings).for_node("fake-hardware", {}).power

    hw = hardware_type("t", "test", power=[("fake", power)], management=[("fake", power)])
    assert hw.supported("boot") == ["pxe", "ipxe"] and hw.default("deploy") == "direct"
    assert hw.supported("inspect") == ["agent", "no-inspect"]
    assert {k for k in GENERIC} | {"power", "management"} == set(INTERFACE_TYPES)
    with pytest.raises(ValueError, match="management"):
        hardware_type("t", "test", power=[("fake", power)])
    with pytest.raises(ValueError, match="unknown interface types"):
        hardware_type("t", "test", power=[], management=[], flux=[])


def test_which_boot_interfaces_boot_the_ramdisk_from_the_network() -> None:
    drivers = Drivers(FAKE)
    assert drivers.boots_from_network("qemu", None)  # default pxe
    assert drivers.boots_from_network("fake-hardware", "pxe")

    class NoNetwork(base.BootInterface):
        name = "no-network"

        def validate(self, task: base.Task) -> None:
            return None

    hw = drivers.types["fake-hardware"]
    drivers.types["fake-hardware"] = type(hw)(
        hw.name, hw.description, {**hw.interfaces, "boot": [("no-network", lambda s: NoNetwork())]}
    )
    assert not drivers.boots_from_network("fake-hardware", "no-network")
    # Unknown types and interfaces keep the old answer; validate() reports them.
    assert drivers.boots_from_network("no-such-type", None)
    assert drivers.boots_from_network("qemu", "no-such-boot")


async def test_close_and_sweep_reach_every_interface_even_past_a_failing_one() -> None:
    drivers = Drivers(FAKE)
    ds = drivers.for_node("fake-hardware", {})
    seen: list[str] = []

    async def boom() -> None:
        seen.append("power")
        raise RuntimeError("BMC refused the logout")

    async def fine() -> None:
        seen.append("management")

    ds.power.close = boom  # type: ignore[method-assign]
    ds.management.close = fine  # type: ignore[method-assign]
    await drivers.close()
    assert sorted(seen) == ["management", "power"]
    await drivers.sweep()  # the default sweep does nothing and raises nothing
