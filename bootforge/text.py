"""Strings from strangers, made safe for a log line or a timeline message.

Anything a client on the provisioning network sends (TFTP file names, HTTP boot paths and query values,
what an agent reports) can carry newlines that forge a second log line, ANSI escapes that repaint an
operator's terminal, bidi controls that reorder what is read, or megabytes of text. `printable` is the
one function every place that puts such a string in a log line or a timeline event goes through.
"""

from __future__ import annotations

__all__ = ["DEFAULT_LIMIT", "MESSAGE_LIMIT", "printable"]

DEFAULT_LIMIT = 200  # characters kept of one quoted value (a file name, a path, a reported error)
MESSAGE_LIMIT = 1000  # characters kept of a whole timeline message built from such values


def printable(value: object, limit: int = DEFAULT_LIMIT) -> str:
    """`value` as one line of printable text, at most about `limit` characters.

    Every character that is not printable (C0 and C1 controls, DEL, line and paragraph separators,
    format characters such as bidi overrides, unassigned code points) becomes a Python-style escape
    (\\x1b, \\u202e); bytes are decoded as UTF-8 with undecodable bytes escaped the same way. Longer text
    is cut at `limit` and ends with a marker naming its escaped length. Printable text within the limit
    comes back unchanged (backslashes too), so a message built from escaped parts may go through it
    again, with a larger limit, unchanged.
    """
    if isinstance(value, bytes | bytearray):
        text = bytes(value).decode("utf-8", "backslashreplace")
    else:
        text = str(value)
    if not text.isprintable():
        text = "".join(c if c.isprintable() else _escape(c) for c in text)
    if len(text) > limit:
        return f"{text[:limit]}...[{len(text)} chars]"
    return text


def _escape(c: str) -> str:
    code = ord(c)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"
