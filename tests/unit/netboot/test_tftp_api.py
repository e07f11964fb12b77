"""The public surface of bootforge.netboot.tftp, and its promise to import only the stdlib."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import bootforge.netboot.tftp as tftp

PACKAGE = Path(tftp.__file__).parent


def test_every_exported_name_exists_and_nothing_is_exported_twice() -> None:
    assert len(tftp.__all__) == len(set(tftp.__all__))
    for name in tftp.__all__:
        assert getattr(tftp, name) is not None, name


def test_package_imports_only_the_standard_library_and_itself() -> None:
    for path in PACKAGE.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                roots = [alias.name.split(".")[0] for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                roots = [node.module.split(".")[0]]
            else:
                continue
            for root in roots:
                assert root == "__future__" or root in sys.stdlib_module_names, (path.name, root)
