"""Root device hints, as Ironic spells them: which disk an image goes to.

A hint is a disk attribute and an expression. Integers (size, in GiB) take an operator, `==` by
default: "size": 10, "size": ">= 10". Strings compare exactly unless they start with one of
Ironic's string operators: "s== a", "s!= a", "<in> a" (a substring), "<or> a <or> b" (any of
them). rotational takes a boolean or its usual spellings. A name without a leading "/" is a
kernel name ("vda" means "/dev/vda").

Every hint given must match. With hints, the first matching disk by name wins; without, the
smallest disk the image fits on. A hint that cannot be parsed is an error, never ignored: an
ignored hint could send an image to the wrong disk.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from .common import CommandError
from .disks import Disk

__all__ = ["Hint", "choose_disk", "parse_hints"]

GiB = 1 << 30
INT_HINTS = frozenset({"size"})
BOOL_HINTS = frozenset({"rotational"})
STR_HINTS = frozenset({"model", "serial", "name", "wwn", "vendor", "hctl", "by_path"})
INT_OPS: dict[str, Callable[[float, float], bool]] = {
    "==": operator.eq,
    "!=": operator.ne,
    ">=": operator.ge,
    "<=": operator.le,
    ">": operator.gt,
    "<": operator.lt,
}
STR_OPS = ("s==", "s!=", "<in>", "<or>")
_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


@dataclass(frozen=True)
class Hint:
    """One parsed hint: attribute, operator and operands (several only for "<or>")."""

    attribute: str
    op: str
    values: tuple[int | str | bool, ...]

    def matches(self, disk: Disk) -> bool:
        actual = getattr(disk, self.attribute)
        if actual is None:
            return False
        if self.attribute == "size":
            return INT_OPS[self.op](actual / GiB, float(self.values[0]))
        if self.op == "s!=":
            return bool(actual != self.values[0])
        if self.op == "<in>":
            return str(self.values[0]) in str(actual)
        # "==" (booleans), "s==" and "<or>": equal to one of the values.
        return bool(actual in self.values)


def parse_hints(raw: Mapping[str, object]) -> list[Hint]:
    if not isinstance(raw, Mapping):
        raise CommandError(f"root device hints must be an object, not {type(raw).__name__}")
    return [_parse_one(str(name), value) for name, value in sorted(raw.items())]


def _parse_one(name: str, value: object) -> Hint:
    if name in INT_HINTS:
        return _parse_int(name, value)
    if name in BOOL_HINTS:
        return Hint(name, "==", (_parse_bool(name, value),))
    if name in STR_HINTS:
        if not isinstance(value, str):
            raise CommandError(f"root device hint {name} must be a string, not {value!r}")
        op, values = _parse_str(name, value)
        if name == "name":
            values = tuple(v if v.startswith("/") else f"/dev/{v}" for v in values)
        return Hint(name, op, values)
    known = ", ".join(sorted(INT_HINTS | BOOL_HINTS | STR_HINTS))
    raise CommandError(f"unknown root device hint {name!r} (known hints: {known})")


def _parse_int(name: str, value: object) -> Hint:
    op, operand = "==", value
    if isinstance(value, str):
        words = value.split()
        if len(words) == 2 and words[0] in INT_OPS:
            op, operand = words[0], words[1]
        elif len(words) == 1:
            operand = words[0]
        else:
            raise CommandError(f"root device hint {name} {value!r} is not '<op> <integer>' or an integer")
    if isinstance(operand, bool) or not isinstance(operand, int | str):
        raise CommandError(f"root device hint {name} {value!r} is not an integer")
    try:
        number = int(operand)
    except ValueError:
        raise CommandError(f"root device hint {name} {value!r} is not an integer") from None
    if number < 0:
        raise CommandError(f"root device hint {name} {value!r} is negative")
    return Hint(name, op, (number,))


def _parse_bool(name: str, value: object) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE or text in _FALSE:
        return text in _TRUE
    raise CommandError(f"root device hint {name} {value!r} is not a boolean")


def _parse_str(name: str, value: str) -> tuple[str, tuple[str, ...]]:
    text = value.strip()
    if text.startswith("<or>"):
        values = tuple(v.strip() for v in text.split("<or>")[1:])
        if not values or not all(values):
            raise CommandError(f"root device hint {name} {value!r} has an empty '<or>' alternative")
        return "<or>", values
    for op in STR_OPS:
        if text.startswith(op + " "):
            return op, (text[len(op) :].strip(),)
    return "s==", (text,)


def choose_disk(disks: Sequence[Disk], raw_hints: Mapping[str, object], needed: int, need: str) -> Disk:
    """The disk for an image of `needed` bytes (`need` says what they are made of, for errors).
    Fails before anything is written when no disk qualifies, naming the sizes involved."""
    hints = parse_hints(raw_hints)
    if not disks:
        raise CommandError("no disks found on this machine")
    if not hints:
        fitting = [d for d in disks if d.size >= needed]
        if not fitting:
            largest = max(disks, key=lambda d: d.size)
            raise CommandError(
                f"no disk is large enough: {need}, the largest disk {largest.name} has {largest.size} bytes"
            )
        return min(fitting, key=lambda d: (d.size, d.name))
    matching = [d for d in sorted(disks, key=lambda d: d.name) if all(h.matches(d) for h in hints)]
    if not matching:
        seen = "; ".join(f"{d.name} ({d.size} bytes, model {d.model}, serial {d.serial})" for d in disks)
        raise CommandError(f"no disk matches the root device hints {dict(raw_hints)}: disks are {seen}")
    disk = matching[0]
    if disk.size < needed:
        raise CommandError(
            f"disk {disk.name} chosen by the root device hints is too small: {need}, "
            f"the disk has {disk.size} bytes"
        )
    return disk
