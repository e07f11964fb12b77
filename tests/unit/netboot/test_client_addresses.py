"""ClientAddresses: the address -> node map that ties TFTP/HTTP fetches to nodes is bounded and expires."""

from __future__ import annotations

import pytest

from bootforge.netboot.clients import ClientAddresses


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_entries_expire_and_a_new_lesson_renews_them() -> None:
    clock = Clock()
    book = ClientAddresses(ttl=60.0, clock=clock)
    book["10.0.0.5"] = "node-a"
    clock.now = 59.0
    assert book.get("10.0.0.5") == "node-a"
    book["10.0.0.5"] = "node-b"  # the address moved to another node: the newest lesson wins
    clock.now = 118.0
    assert book.get("10.0.0.5") == "node-b"
    clock.now = 119.0
    assert book.get("10.0.0.5") is None and len(book) == 0


def test_a_flood_of_addresses_keeps_only_the_newest() -> None:
    book = ClientAddresses(limit=100)
    for i in range(10_000):  # a stranger teaching addresses with forged DHCP packets
        book[f"10.{i // 65536}.{i // 256 % 256}.{i % 256}"] = f"node-{i}"
    assert len(book) == 100
    assert book.get("10.0.0.0") is None and book.get("10.0.39.15") == "node-9999"


def test_forget_only_removes_the_nodes_own_entry() -> None:
    book = ClientAddresses()
    book["10.0.0.5"] = "node-b"
    book.forget("10.0.0.5", "node-a")  # an old lease of another node ending
    assert book.get("10.0.0.5") == "node-b"
    book.forget("10.0.0.5", "node-b")
    assert book.get("10.0.0.5") is None


def test_bad_bounds_are_refused() -> None:
    with pytest.raises(ValueError, match="limit"):
        ClientAddresses(limit=0)
