"""Root device hints: parsing (properties with hypothesis), matching, and choosing the disk."""

from __future__ import annotations

import operator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bootforge.agent.common import CommandError
from bootforge.agent.disks import Disk
from bootforge.agent.hints import INT_OPS, choose_disk, parse_hints

GiB = 1 << 30
PY_OPS = {
    "==": operator.eq,
    "!=": operator.ne,
    ">=": operator.ge,
    "<=": operator.le,
    ">": operator.gt,
    "<": operator.lt,
}


def disk(name: str, gib: float, **attrs: Any) -> Disk:
    return Disk(name=name, path=Path(name), size=int(gib * GiB), **attrs)


def matches(hints: dict[str, object], d: Disk) -> bool:
    return all(h.matches(d) for h in parse_hints(hints))


@given(
    op=st.sampled_from(sorted(INT_OPS)),
    n=st.integers(0, 10**6),
    gib=st.integers(0, 10**6),
    pad=st.text(" ", max_size=3),
)
def test_size_operator_is_pythons(op: str, n: int, gib: int, pad: str) -> None:
    assert matches({"size": f"{pad}{op}{pad or ' '}{n}{pad}"}, disk("/dev/x", gib)) is PY_OPS[op](gib, n)


@given(n=st.integers(0, 10**6), gib=st.integers(0, 10**6), as_text=st.booleans())
def test_plain_size_means_equal(n: int, gib: int, as_text: bool) -> None:
    assert matches({"size": str(n) if as_text else n}, disk("/dev/x", gib)) is (n == gib)


def test_size_compares_whole_gib_exactly_like_ironic() -> None:
    # Ironic divides bytes by GiB without rounding: 10 GiB + 1 MiB is not "== 10" but is "> 10".
    odd = disk("/dev/x", 10 + 1 / 1024)
    assert not matches({"size": 10}, odd) and matches({"size": "> 10"}, odd)


@given(
    value=st.one_of(
        st.text(max_size=20), st.integers(), st.floats(), st.booleans(), st.none(), st.lists(st.integers())
    )
)
def test_any_value_parses_or_fails_with_a_command_error(value: object) -> None:
    for name in ("size", "rotational", "model", "name"):
        try:
            parse_hints({name: value})
        except CommandError as exc:
            assert name in str(exc)


@given(text=st.text(min_size=1, max_size=30).filter(str.strip))
def test_plain_string_compares_exactly(text: str) -> None:
    assert matches({"model": text}, disk("/dev/x", 1, model=text.strip()))
    assert not matches({"model": text}, disk("/dev/x", 1, model=text.strip() + "x"))


@pytest.mark.parametrize(
    ("hints", "expected"),
    [
        ({"model": "s== QEMU HARDDISK"}, True),
        ({"model": "s!= QEMU HARDDISK"}, False),
        ({"model": "<in> HARD"}, True),
        ({"model": "<in> SSD"}, False),
        ({"model": "<or> Samsung <or> QEMU HARDDISK"}, True),
        ({"model": "<or> Samsung <or> Intel"}, False),
        ({"serial": "QM00001", "vendor": "ATA"}, True),
        ({"serial": "QM00001", "vendor": "WDC"}, False),
        ({"wwn": "0x5000c500a0b1c2d3"}, True),
        ({"rotational": True}, True),
        ({"rotational": "false"}, False),
        ({"name": "sda"}, True),
        ({"name": "/dev/sda"}, True),
        ({"hctl": "0:0:0:0"}, True),
        ({"by_path": "/dev/disk/by-path/pci-0000:00:05.0-ata-1"}, True),
        ({"size": ">= 20", "model": "<in> QEMU"}, True),
        ({"size": "< 20", "model": "<in> QEMU"}, False),
    ],
)
def test_hint_matching(hints: dict[str, object], expected: bool) -> None:
    sda = disk(
        "/dev/sda",
        20,
        model="QEMU HARDDISK",
        vendor="ATA",
        serial="QM00001",
        wwn="0x5000c500a0b1c2d3",
        rotational=True,
        hctl="0:0:0:0",
        by_path="/dev/disk/by-path/pci-0000:00:05.0-ata-1",
    )
    assert matches(hints, sda) is expected


def test_missing_attribute_never_matches() -> None:
    assert not matches({"serial": "s!= x"}, disk("/dev/vda", 1))


@pytest.mark.parametrize(
    ("hints", "message"),
    [
        ({"colour": "red"}, "unknown root device hint 'colour'"),
        ({"size": "about 10"}, "is not .<op> <integer>. or an integer"),
        ({"size": "= 10"}, "is not .<op> <integer>. or an integer"),
        ({"size": "=> 10 GiB"}, "is not '<op> <integer>'"),
        ({"size": -1}, "is negative"),
        ({"size": True}, "is not an integer"),
        ({"size": 10.5}, "is not an integer"),
        ({"rotational": "maybe"}, "is not a boolean"),
        ({"model": 7}, "must be a string"),
        ({"model": "<or> a <or>"}, "empty '<or>' alternative"),
    ],
)
def test_bad_hints(hints: dict[str, object], message: str) -> None:
    with pytest.raises(CommandError, match=message):
        parse_hints(hints)


DISKS = [disk("/dev/vdc", 10), disk("/dev/vda", 40), disk("/dev/vdb", 20)]


def test_without_hints_the_smallest_disk_that_fits() -> None:
    assert choose_disk(DISKS, {}, 5 * GiB, "").name == "/dev/vdc"
    assert choose_disk(DISKS, {}, 15 * GiB, "").name == "/dev/vdb"


def test_with_hints_the_first_matching_disk_by_name() -> None:
    assert choose_disk(DISKS, {"size": ">= 20"}, GiB, "").name == "/dev/vda"


def test_nothing_fits_names_the_sizes() -> None:
    with pytest.raises(
        CommandError, match=rf"no disk is large enough: needs 50, the largest disk /dev/vda has {40 * GiB}"
    ):
        choose_disk(DISKS, {}, 50 * GiB, "needs 50")


def test_no_match_lists_the_disks() -> None:
    with pytest.raises(
        CommandError, match=r"no disk matches the root device hints \{'serial': 'nope'\}.*/dev/vdb"
    ):
        choose_disk(DISKS, {"serial": "nope"}, GiB, "")


def test_no_disks_at_all() -> None:
    with pytest.raises(CommandError, match="no disks found"):
        choose_disk([], {}, GiB, "")
