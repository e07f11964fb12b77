"""Fixtures shared by every test directory; they live in tests/support (importable as `support`).

pytest's default "prepend" import mode puts this directory (tests/, which has no __init__.py) on
sys.path before importing this file, so `support` is importable from here and from test modules.
"""

from support.lab import make_lab
from support.netns import (
    netns_available,
    netns_lan,
    netns_relayed_lan,
    netns_topology,
)
from support.postgres import (
    postgres_fresh_url,
    postgres_server,
    postgres_sync_url,
    postgres_url,
)
from support.service import bf, bf_server

__all__ = [
    "bf",
    "bf_server",
    "make_lab",
    "netns_available",
    "netns_lan",
    "netns_relayed_lan",
    "netns_topology",
    "postgres_fresh_url",
    "postgres_server",
    "postgres_sync_url",
    "postgres_url",
]
