"""The discovery rule engine (conductor/discovery_rules.py): validation naming the field, the condition
evaluator against an independent model of each op (hypothesis), priority order and templates."""

from __future__ import annotations

import re
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bootforge.conductor import discovery_rules as r
from bootforge.conductor.discovery import clean_serial, token_problem
from bootforge.conductor.discovery_boot import new_boot_id, token_for
from bootforge.errors import InvalidInput
from bootforge.keys import SecretKey

INVENTORY: dict[str, Any] = {
    "cpu": {"count": 4, "architecture": "x86_64"},
    "memory": {"physical_mb": 2048},
    "system_vendor": {"manufacturer": "QEMU", "product_name": "Standard PC", "serial_number": "SN-7"},
    "interfaces": [{"name": "ens3", "mac_address": "52:54:00:00:00:07"}],
    "bmc_address": "10.1.2.3",
}

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-1000, 1000),
    st.floats(-1e6, 1e6, allow_nan=False),
    st.text(max_size=8),
)


def model(op: str, got: Any, want: Any) -> bool:
    """What each op means, written without the engine's code."""
    missing = got is r.MISSING
    if op == "exists":
        return (not missing and got is not None) == want
    if missing:
        return op == "ne"

    def num(v: Any) -> float | None:
        if isinstance(v, bool):
            return None
        if isinstance(v, (int, float)):
            return float(v)
        if isinstance(v, str):
            try:
                return float(v)
            except ValueError:
                return None
        return None

    if op in ("eq", "ne"):
        if not isinstance(got, str) and num(got) is not None and num(want) is not None:
            equal = num(got) == num(want)
        else:
            equal = got == want
        return equal if op == "eq" else not equal
    if op in ("lt", "gt"):
        g = num(got)
        return g is not None and (g < want if op == "lt" else g > want)
    if op == "contains":
        if isinstance(got, str):
            return isinstance(want, str) and want in got
        return isinstance(got, list) and want in got
    return isinstance(got, str) and re.fullmatch(want, got) is not None


@given(
    got=st.one_of(scalars, st.lists(scalars, max_size=3)),
    want=scalars,
    op=st.sampled_from(["eq", "ne", "contains"]),
)
def test_equality_and_contains_follow_the_model(got: Any, want: Any, op: str) -> None:
    cond = r._check_condition({"field": "inventory.x", "op": op, "value": want}, "c")
    assert r.holds(cond, {"inventory": {"x": got}}) is model(op, got, want)


@given(
    got=scalars,
    want=st.one_of(st.integers(-1000, 1000), st.floats(-1e6, 1e6, allow_nan=False)),
    op=st.sampled_from(["lt", "gt"]),
)
def test_ordering_follows_the_model(got: Any, want: Any, op: str) -> None:
    cond = r._check_condition({"field": "inventory.x", "op": op, "value": want}, "c")
    assert r.holds(cond, {"inventory": {"x": got}}) is model(op, got, want)


@given(got=st.text(alphabet="ab1-", max_size=6), pattern=st.sampled_from(["a+", "[ab]*1", ".*-.*", "b?"]))
def test_matches_is_a_full_match(got: str, pattern: str) -> None:
    cond = r._check_condition({"field": "inventory.x", "op": "matches", "value": pattern}, "c")
    assert r.holds(cond, {"inventory": {"x": got}}) is model("matches", got, pattern)


@given(present=st.booleans(), value=scalars, want=st.booleans(), op=st.sampled_from(list(r.OPS)))
def test_a_missing_field_is_false_for_every_op_but_ne_and_not_exists(
    present: bool, value: Any, want: bool, op: str
) -> None:
    wanted: Any = {"exists": want, "lt": 1, "gt": 1, "matches": ".*"}.get(op, "v")
    cond = r._check_condition({"field": "inventory.a.b", "op": op, "value": wanted}, "c")
    doc = {"inventory": {"a": {"b": value}} if present else {}}
    got = value if present else r.MISSING
    assert r.holds(cond, doc) is model(op, got, wanted)


@given(flags=st.lists(st.booleans(), min_size=1, max_size=6), match=st.sampled_from(["all", "any"]))
def test_all_and_any(flags: list[bool], match: str) -> None:
    conditions = [{"field": f"inventory.f{i}", "op": "eq", "value": True} for i in range(len(flags))]
    rule = r.check_rule(
        {"match": match, "conditions": conditions, "actions": [{"action": "add-trait", "value": "X"}]}
    )
    doc = {"inventory": {f"f{i}": flag for i, flag in enumerate(flags)}}
    assert r.rule_matches(rule, doc) is (all(flags) if match == "all" else any(flags))


def test_list_elements_by_index_and_templates_keep_types() -> None:
    doc = {"inventory": INVENTORY}
    assert r.lookup(doc, "inventory.interfaces.0.mac_address") == "52:54:00:00:00:07"
    assert r.lookup(doc, "inventory.interfaces.1.mac_address") is r.MISSING
    assert r.render("{inventory.cpu.count}", doc) == 4
    assert r.render("rack1-{inventory.system_vendor.serial_number}", doc) == "rack1-SN-7"
    with pytest.raises(KeyError):
        r.render("x-{inventory.nothing}", doc)


def test_priority_order_first_setter_wins_traits_accumulate() -> None:
    low = r.check_rule(
        {"name": "low", "priority": 1, "actions": [
            {"action": "set-driver", "value": "redfish"}, {"action": "add-trait", "value": "CUSTOM_LOW"},
            {"action": "set-resource-class", "value": "small"}]}
    )  # fmt: skip
    high = r.check_rule(
        {"name": "high", "priority": 50, "conditions": [
            {"field": "inventory.system_vendor.manufacturer", "op": "eq", "value": "QEMU"}], "actions": [
            {"action": "set-driver", "value": "qemu"}, {"action": "add-trait", "value": "CUSTOM_VM"},
            {"action": "set-driver-info", "field": "ipmi_address", "value": "{inventory.bmc_address}"},
            {"action": "set-name", "value": "rack1-{inventory.system_vendor.serial_number}"},
            {"action": "set-property", "field": "rack", "value": "r1"},
            {"action": "set-driver-info", "field": "missing", "value": "{inventory.nope}"}]}
    )  # fmt: skip
    never = r.check_rule(
        {"name": "never", "priority": 99, "actions": [{"action": "set-driver", "value": "ipmi"}],
         "conditions": [{"field": "inventory.cpu.count", "op": "gt", "value": 64}]}
    )  # fmt: skip
    plan = r.plan([low, never, high], INVENTORY)
    assert plan.applied == ["high", "low"]
    assert plan.driver == "qemu"
    assert plan.traits == ["CUSTOM_VM", "CUSTOM_LOW"]
    assert plan.driver_info == {"ipmi_address": "10.1.2.3"}
    assert plan.name == "rack1-SN-7"
    assert plan.resource_class == "small"
    assert plan.properties == {"rack": "r1"}
    assert plan.skipped == ["high: set-driver-info skipped, the inventory has no inventory.nope"]


ACT = [{"action": "set-driver", "value": "x"}]


def cond(c: dict[str, Any]) -> dict[str, Any]:
    return {"conditions": [c], "actions": ACT}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"actions": []}, "actions"),
        ({"actions": [{"action": "set-driver", "value": "x"}], "bogus": 1}, "bogus"),
        ({"actions": [{"action": "set-driver", "value": "x"}], "priority": "high"}, "priority"),
        ({"actions": [{"action": "set-driver", "value": "x"}], "match": "some"}, "match"),
        ({"actions": [{"action": "explode", "value": "x"}]}, "actions[0].action"),
        ({"actions": [{"action": "set-driver-info", "value": "x"}]}, "actions[0].field"),
        ({"actions": [{"action": "set-driver"}]}, "actions[0].value"),
        ({"actions": [{"action": "set-name", "value": "{cpu.count}"}]}, "actions[0].value"),
        ({"actions": [{"action": "add-trait", "value": "lower"}]}, "actions[0].value"),
        (cond({"field": "cpu.count", "op": "eq", "value": 1}), "conditions[0].field"),
        (cond({"field": "inventory.cpu", "op": "is", "value": 1}), "conditions[0].op"),
        (cond({"field": "inventory.cpu", "op": "lt", "value": "1"}), "conditions[0].value"),
        (cond({"field": "inventory.cpu", "op": "matches", "value": "("}), "conditions[0].value"),
        (cond({"field": "inventory.cpu", "op": "eq"}), "conditions[0].value"),
        (cond({"field": "inventory.cpu", "op": "eq", "value": [1]}), "conditions[0].value"),
    ],
)  # fmt: skip
def test_validation_names_the_field(body: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidInput) as e:
        r.check_rule(body)
    assert e.value.field == field


def test_discovery_token_binds_mac_and_boot_and_expires() -> None:
    key = SecretKey(b"k" * 32)
    boot = new_boot_id(now=1_700_000_000)
    token = token_for(key, "52:54:00:00:00:01", boot)
    assert token_problem(key, "52:54:00:00:00:01", boot, token, 3600, 1_700_000_100) is None
    assert token_problem(key, "52:54:00:00:00:02", boot, token, 3600, 1_700_000_100) is not None
    assert token_problem(key, "52:54:00:00:00:01", new_boot_id(now=1_700_000_000), token, 3600, 1_700_000_100)
    assert "old" in str(token_problem(key, "52:54:00:00:00:01", boot, token, 3600, 1_700_010_000))
    assert (
        token_problem(key, "52:54:00:00:00:01", "garbage", token, 3600, 1_700_000_100)
        == "the boot id is malformed"
    )


def test_junk_serials_are_no_identity() -> None:
    assert clean_serial({"system_vendor": {"serial_number": " SN-7 "}}) == "SN-7"
    for junk in ("", "To Be Filled By O.E.M.", "0", "Default string"):
        assert clean_serial({"system_vendor": {"serial_number": junk}}) is None
    assert clean_serial({}) is None
