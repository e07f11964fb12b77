"""Microversions: what a request asked for, and whether bootforge can answer it.

The maximum is the newest version whose behaviour bootforge implements in full (fields, verbs and
endpoints up to node history, 1.78); a client that asks for more gets 406 and negotiates down, which is
what the `baremetal` CLI and openstacksdk do on their own.
"""

from __future__ import annotations

from typing import Final, NamedTuple

from bootforge.errors import NotAcceptable

MIN_VERSION: Final = (1, 1)
MAX_VERSION: Final = (1, 78)
HEADER: Final = "x-openstack-ironic-api-version"
STANDARD_HEADER: Final = "openstack-api-version"


class Version(NamedTuple):
    major: int
    minor: int

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}"


MIN: Final = Version(*MIN_VERSION)
MAX: Final = Version(*MAX_VERSION)


def parse(raw: str | None) -> Version:
    """The version a request asked for; MIN when it asked for none, MAX for 'latest'."""
    if raw is None or raw.strip() == "":
        return MIN
    text = raw.strip()
    if text.lower() == "latest":
        return MAX
    major, sep, minor = text.partition(".")
    # Checked as text: int() of thousands of digits raises (or takes time) on its own.
    if not sep or not _number(major) or not _number(minor):
        shown = raw if len(raw) <= 40 else f"{raw[:40]}... ({len(raw)} characters)"
        raise NotAcceptable(
            f"Invalid value for the X-OpenStack-Ironic-API-Version (or OpenStack-API-Version) header: "
            f"{shown!r}; expected MAJOR.MINOR such as {MAX}"
        )
    version = Version(int(major), int(minor))
    if not MIN <= version <= MAX:
        raise NotAcceptable(
            f"Version {version} was requested but the minor version is not supported by this service. "
            f"The supported version range is: [{MIN}, {MAX}]."
        )
    return version


def _number(text: str) -> bool:
    return text.isascii() and text.isdigit() and len(text) <= 6


def from_headers(legacy: str | None, standard: str | None) -> Version:
    if legacy is not None:
        return parse(legacy)
    if standard is not None:
        service, _, value = standard.strip().partition(" ")
        if service.lower() == "baremetal":
            return parse(value)
    return MIN
