"""The `api` fixture: an in-process bootforge (`bf`) with the helpers of apihelp.py."""

from __future__ import annotations

import pytest
from apihelp import Api
from support.service import InProcess


@pytest.fixture
def api(bf: InProcess) -> Api:
    return Api(bf)
