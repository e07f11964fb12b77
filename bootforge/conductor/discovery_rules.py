"""Discovery rules: conditions on an inspection inventory -> actions on the node. Pure functions.

A rule::

    {"name": "rack1-dell", "priority": 100, "match": "all",
     "conditions": [{"field": "inventory.system_vendor.manufacturer", "op": "eq", "value": "Dell Inc."}],
     "actions": [{"action": "set-driver", "value": "ipmi"},
                 {"action": "set-driver-info", "field": "ipmi_address", "value": "{inventory.bmc_address}"},
                 {"action": "set-name", "value": "rack1-{inventory.system_vendor.serial_number}"}]}

Fields are dotted paths into {"inventory": ...}; a list element is named by its index
("inventory.interfaces.0.mac_address"). Rules run in priority order, highest first; when two rules set
the same thing the first (higher priority) wins, traits accumulate. String action values are templates:
"{path}" is replaced by the field's value, and an action whose template names a missing field is skipped
and reported, never applied half.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from bootforge.errors import InvalidInput

OPS = ("eq", "ne", "lt", "gt", "contains", "matches", "exists")
ACTIONS = ("set-driver", "set-driver-info", "set-resource-class", "add-trait", "set-name", "set-property")
# Actions that need a `field` (the key they set).
FIELD_ACTIONS = frozenset({"set-driver-info", "set-property"})
MAX_CONDITIONS = 32
MAX_ACTIONS = 32
MAX_TEXT = 255
MAX_VALUE_CHARS = 1024
MAX_PATH_PARTS = 12
PATH_RE = re.compile(r"^inventory(\.[A-Za-z0-9_\-]{1,64}){0,11}$")
KEY_RE = re.compile(r"^[A-Za-z0-9_\-]{1,64}$")
TRAIT_RE = re.compile(r"^[A-Z0-9_]{1,255}$")
TEMPLATE_RE = re.compile(r"\{([^{}]*)\}")
RULE_FIELDS = frozenset({"uuid", "name", "description", "priority", "match", "conditions", "actions"})
MISSING = object()


@dataclass
class Plan:
    """What the matching rules ask for; `applied` names them, `skipped` says what could not be done."""

    driver: str | None = None
    driver_info: dict[str, Any] = field(default_factory=dict)
    resource_class: str | None = None
    traits: list[str] = field(default_factory=list)
    name: str | None = None
    properties: dict[str, Any] = field(default_factory=dict)
    applied: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (
            self.driver
            or self.driver_info
            or self.resource_class
            or self.traits
            or self.name
            or self.properties
        )


# --- validation -------------------------------------------------------------------------------------


def check_rule(body: Any) -> dict[str, Any]:
    """A rule as stored, or InvalidInput naming the field that is wrong."""
    if not isinstance(body, dict):
        raise InvalidInput("a discovery rule is a JSON object", "body")
    unknown = sorted(set(body) - RULE_FIELDS)
    if unknown:
        raise InvalidInput(f"unknown field {unknown[0]!r} in a discovery rule", unknown[0])
    name = body.get("name")
    if name is not None and (not isinstance(name, str) or not KEY_RE.match(name)):
        raise InvalidInput("name must be 1-64 letters, digits, '_' or '-'", "name")
    description = body.get("description")
    if description is not None and (not isinstance(description, str) or len(description) > MAX_TEXT):
        raise InvalidInput(f"description must be a string of at most {MAX_TEXT} characters", "description")
    priority = body.get("priority", 0)
    if isinstance(priority, bool) or not isinstance(priority, int) or not -10_000 <= priority <= 10_000:
        raise InvalidInput("priority must be an integer from -10000 to 10000", "priority")
    match = body.get("match", "all")
    if match not in ("all", "any"):
        raise InvalidInput("match must be 'all' or 'any'", "match")
    conditions = body.get("conditions", [])
    if not isinstance(conditions, list) or len(conditions) > MAX_CONDITIONS:
        raise InvalidInput(f"conditions must be a list of at most {MAX_CONDITIONS} conditions", "conditions")
    actions = body.get("actions")
    if not isinstance(actions, list) or not 1 <= len(actions) <= MAX_ACTIONS:
        raise InvalidInput(f"actions must be a list of 1 to {MAX_ACTIONS} actions", "actions")
    return {
        "name": name,
        "description": description,
        "priority": priority,
        "match": match,
        "conditions": [_check_condition(c, f"conditions[{i}]") for i, c in enumerate(conditions)],
        "actions": [_check_action(a, f"actions[{i}]") for i, a in enumerate(actions)],
    }


def _check_condition(c: Any, where: str) -> dict[str, Any]:
    if not isinstance(c, dict):
        raise InvalidInput(f"{where} must be an object with field, op and value", where)
    unknown = sorted(set(c) - {"field", "op", "value"})
    if unknown:
        raise InvalidInput(f"unknown key {unknown[0]!r} in {where}", f"{where}.{unknown[0]}")
    path = c.get("field")
    if not isinstance(path, str) or not PATH_RE.match(path):
        raise InvalidInput(
            f"{where}.field must be a dotted path starting with 'inventory' (e.g. inventory.cpu.count)",
            f"{where}.field",
        )
    op = c.get("op")
    if op not in OPS:
        raise InvalidInput(f"{where}.op must be one of {', '.join(OPS)}", f"{where}.op")
    value = c.get("value", True if op == "exists" else MISSING)
    if value is MISSING:
        raise InvalidInput(f"{where}.value is required for op {op}", f"{where}.value")
    if op == "exists" and not isinstance(value, bool):
        raise InvalidInput(f"{where}.value must be true or false for op exists", f"{where}.value")
    if op in ("lt", "gt") and (isinstance(value, bool) or not isinstance(value, int | float)):
        raise InvalidInput(f"{where}.value must be a number for op {op}", f"{where}.value")
    if op == "matches":
        if not isinstance(value, str) or len(value) > MAX_TEXT:
            raise InvalidInput(
                f"{where}.value must be a regular expression of at most {MAX_TEXT} characters",
                f"{where}.value",
            )
        try:
            re.compile(value)
        except re.error as e:
            raise InvalidInput(
                f"{where}.value is not a valid regular expression: {e}", f"{where}.value"
            ) from None
    if op in ("eq", "ne", "contains") and not _scalar(value):
        raise InvalidInput(f"{where}.value must be a string, number, boolean or null", f"{where}.value")
    if isinstance(value, str) and len(value) > MAX_VALUE_CHARS:
        raise InvalidInput(f"{where}.value is longer than {MAX_VALUE_CHARS} characters", f"{where}.value")
    return {"field": path, "op": op, "value": value}


def _check_action(a: Any, where: str) -> dict[str, Any]:
    if not isinstance(a, dict):
        raise InvalidInput(f"{where} must be an object with action and value", where)
    unknown = sorted(set(a) - {"action", "field", "value"})
    if unknown:
        raise InvalidInput(f"unknown key {unknown[0]!r} in {where}", f"{where}.{unknown[0]}")
    kind = a.get("action")
    if kind not in ACTIONS:
        raise InvalidInput(f"{where}.action must be one of {', '.join(ACTIONS)}", f"{where}.action")
    out: dict[str, Any] = {"action": kind}
    if kind in FIELD_ACTIONS:
        key = a.get("field")
        if not isinstance(key, str) or not KEY_RE.match(key):
            raise InvalidInput(
                f"{where}.field must be a key of 1-64 letters, digits, '_' or '-'", f"{where}.field"
            )
        out["field"] = key
    elif "field" in a:
        raise InvalidInput(f"{where}.field is not used by action {kind}", f"{where}.field")
    if "value" not in a:
        raise InvalidInput(f"{where}.value is required", f"{where}.value")
    value = a["value"]
    if kind != "set-property" and kind != "set-driver-info" and not isinstance(value, str):
        raise InvalidInput(f"{where}.value must be a string for action {kind}", f"{where}.value")
    if not _scalar(value):
        raise InvalidInput(f"{where}.value must be a string, number, boolean or null", f"{where}.value")
    if isinstance(value, str):
        if len(value) > MAX_VALUE_CHARS:
            raise InvalidInput(f"{where}.value is longer than {MAX_VALUE_CHARS} characters", f"{where}.value")
        for ref in TEMPLATE_RE.findall(value):
            if not PATH_RE.match(ref):
                raise InvalidInput(
                    f"{where}.value: {{{ref}}} is not a field path starting with 'inventory'",
                    f"{where}.value",
                )
        literal = not TEMPLATE_RE.search(value)
        if kind == "add-trait" and literal and not TRAIT_RE.match(value):
            raise InvalidInput(
                f"{where}.value: a trait is upper-case letters, digits and '_'", f"{where}.value"
            )
    out["value"] = value
    return out


def _scalar(value: Any) -> bool:
    return value is None or isinstance(value, str | int | float | bool)


# --- evaluation -------------------------------------------------------------------------------------


def lookup(doc: Any, path: str) -> Any:
    """The value at a dotted path (list elements by index), or MISSING."""
    here = doc
    for part in path.split(".")[:MAX_PATH_PARTS]:
        if isinstance(here, dict):
            if part not in here:
                return MISSING
            here = here[part]
        elif isinstance(here, list) and part.isdigit() and int(part) < len(here):
            here = here[int(part)]
        else:
            return MISSING
    return here


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def holds(condition: dict[str, Any], doc: Any) -> bool:
    """Whether one (validated) condition holds for `doc`. A missing field makes every op false but
    `exists: false` and `ne` (a missing value is not equal to anything)."""
    op: str = condition["op"]
    want = condition["value"]
    got = lookup(doc, condition["field"])
    if op == "exists":
        return (got is not MISSING and got is not None) is bool(want)
    if got is MISSING:
        return bool(op == "ne")
    if op in ("eq", "ne"):
        a, b = _number(got), _number(want)
        same = a == b if a is not None and b is not None and not isinstance(got, str) else got == want
        return same if op == "eq" else not same
    if op in ("lt", "gt"):
        value = _number(got)
        if value is None:
            return False
        return value < float(want) if op == "lt" else value > float(want)
    if op == "contains":
        if isinstance(got, str):
            return isinstance(want, str) and want in got
        if isinstance(got, list):
            return want in got
        return False
    # matches: the whole string, as a regular expression (inventory strings are bounded by the
    # inventory's size limit; the pattern by MAX_TEXT).
    return isinstance(got, str) and re.fullmatch(want, got) is not None


def rule_matches(rule: dict[str, Any], doc: Any) -> bool:
    conditions = rule.get("conditions") or []
    if not conditions:
        return True
    results = (holds(c, doc) for c in conditions)
    if rule.get("match", "all") == "all":
        return all(results)
    return any(results)


def render(value: Any, doc: Any) -> Any:
    """A template's value: "{path}" replaced by the field's value; KeyError naming a missing field.
    A template that is exactly one reference keeps the field's type (a number stays a number)."""
    if not isinstance(value, str):
        return value
    refs = TEMPLATE_RE.findall(value)
    if not refs:
        return value
    values = {}
    for ref in refs:
        got = lookup(doc, ref)
        if got is MISSING or got is None or isinstance(got, dict | list):
            raise KeyError(ref)
        values[ref] = got
    if len(refs) == 1 and value == "{" + refs[0] + "}":
        return values[refs[0]]
    return TEMPLATE_RE.sub(lambda m: str(values[m.group(1)]), value)


def order(rules: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Highest priority first; equal priorities by name, then creation order (the list's order)."""
    return sorted(rules, key=lambda r: (-int(r.get("priority") or 0), str(r.get("name") or "")))


def plan(rules: list[dict[str, Any]], inventory: dict[str, Any]) -> Plan:
    """What the rules that match `inventory` ask for."""
    doc = {"inventory": inventory}
    out = Plan()
    for rule in order(rules):
        if not rule_matches(rule, doc):
            continue
        label = str(rule.get("name") or rule.get("uuid") or "rule")
        out.applied.append(label)
        for action in rule.get("actions") or []:
            try:
                value = render(action["value"], doc)
            except KeyError as e:
                out.skipped.append(f"{label}: {action['action']} skipped, the inventory has no {e.args[0]}")
                continue
            _apply(out, action, value, label)
    return out


def _apply(out: Plan, action: dict[str, Any], value: Any, label: str) -> None:
    kind = action["action"]
    if kind == "set-driver":
        out.driver = out.driver or str(value)
    elif kind == "set-driver-info":
        out.driver_info.setdefault(action["field"], value)
    elif kind == "set-resource-class":
        out.resource_class = out.resource_class or str(value)[:80]
    elif kind == "add-trait":
        trait = str(value).upper().replace("-", "_").replace(".", "_")
        if TRAIT_RE.match(trait):
            if trait not in out.traits:
                out.traits.append(trait)
        else:
            out.skipped.append(f"{label}: add-trait skipped, {trait!r} is not a valid trait")
    elif kind == "set-name":
        out.name = out.name or str(value)
    elif kind == "set-property":
        out.properties.setdefault(action["field"], value)
