"""bootforge.text.printable: what a stranger sends reaches logs and timelines as one escaped line."""

from __future__ import annotations

import pytest

from bootforge.text import printable


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("pxelinux.0", "pxelinux.0"),
        ("a\nb", "a\\x0ab"),
        ("a\r\nforged: line", "a\\x0d\\x0aforged: line"),
        ("\x1b[31mred\x1b[0m", "\\x1b[31mred\\x1b[0m"),
        ("nul\x00del\x7fc1\x85", "nul\\x00del\\x7fc1\\x85"),
        ("bidi\u202eexe.txt", "bidi\\u202eexe.txt"),
        ("line\u2028sep", "line\\u2028sep"),
        ("tab\there", "tab\\x09here"),
        ("grüße/ü.efi", "grüße/ü.efi"),  # printable non-ASCII stays readable
        (b"bytes\n\xff", "bytes\\x0a\\xff"),
        (None, "None"),
    ],
)
def test_controls_are_escaped_and_printable_text_is_kept(raw: object, shown: str) -> None:
    assert printable(raw) == shown


def test_the_result_is_always_one_printable_line() -> None:
    every = "".join(chr(c) for c in range(0x3000))
    out = printable(every, limit=100_000)
    assert out.isprintable() and "\n" not in out and "\x1b" not in out


def test_long_values_are_cut_with_a_marker_naming_their_length() -> None:
    out = printable("x" * 5000, limit=200)
    assert out == "x" * 200 + "...[5000 chars]"
    assert printable("y" * 200, limit=200) == "y" * 200


def test_escaped_text_goes_through_again_unchanged() -> None:
    once = printable("evil\n\x1b[31m" * 10)
    assert printable(once, limit=1000) == once
