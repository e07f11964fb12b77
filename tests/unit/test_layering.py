"""Arrows point one way: api -> conductor -> drivers -> db; netboot knows nothing of bootforge.

Walks every module's imports with `ast`, so a new import that turns an arrow around fails here, where
it is cheap to fix, instead of in a circular-import error at start-up.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2] / "bootforge"

# package -> the bootforge packages it must never import
FORBIDDEN = {
    "netboot": {"api", "conductor", "db", "drivers", "servers", "cli", "lab", "config", "errors"},
    "servers": {"api", "conductor", "db", "drivers", "cli"},
    "drivers": {"api", "conductor", "cli", "servers", "lab"},
    "db": {"api", "conductor", "drivers", "cli", "servers", "netboot"},
    "conductor": {"api", "cli"},
    "images": {"api", "conductor", "cli", "servers", "drivers", "lab"},
    "agent": {"api", "conductor", "cli", "servers", "drivers", "lab", "db", "images", "netboot", "config"},
    "lab": {"api", "conductor", "db", "cli"},
    "ramdisk": {"api", "conductor", "db", "cli", "drivers", "servers", "lab", "images"},
}


def imports_of(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name.split(".")[1] for name in found if name.startswith("bootforge.") and "." in name}


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_imports_point_one_way(package: str) -> None:
    offenders = []
    for path in sorted((ROOT / package).rglob("*.py")):
        bad = imports_of(path) & FORBIDDEN[package]
        if bad:
            offenders.append(f"{path.relative_to(ROOT)} imports {sorted(bad)}")
    assert not offenders, "\n".join(offenders)
