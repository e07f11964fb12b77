"""The agent must run in the ramdisk: standard library only, relative imports only, as `bootforge_agent`.

Also keeps the path to the first lookup light: what `python -m bootforge_agent` imports before it
calls the conductor is checked against a list of modules that are known to be slow to import.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import bootforge
from bootforge import agent

AGENT_DIR = Path(agent.__file__).parent
MODULES = sorted(AGENT_DIR.glob("*.py"))


def absolute_imports(path: Path) -> set[str]:
    """Top-level names of every absolute import in a module (relative ones are the package's own)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_every_module_imports_only_the_standard_library() -> None:
    assert len(MODULES) >= 8
    offenders = {
        path.name: sorted(bad)
        for path in MODULES
        if (bad := absolute_imports(path) - set(sys.stdlib_module_names))
    }
    assert offenders == {}


def test_the_agent_version_is_bootforges() -> None:
    assert agent.__version__ == bootforge.__version__


def copy_as_top_level(tmp_path: Path) -> Path:
    target = tmp_path / "bootforge_agent"
    shutil.copytree(AGENT_DIR, target, ignore=shutil.ignore_patterns("__pycache__"))
    return tmp_path


def isolated_python(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Python without site-packages, environment or user site: sys.path is cwd + the standard library."""
    return subprocess.run(
        [sys.executable, "-E", "-s", "-S", *args], cwd=cwd, capture_output=True, text=True, timeout=60
    )


def test_runs_as_top_level_package_without_bootforge(tmp_path: Path) -> None:
    root = copy_as_top_level(tmp_path)
    proc = isolated_python(root, "-m", "bootforge_agent", "--help")
    assert proc.returncode == 0, proc.stderr
    assert "--api" in proc.stdout and "--sys-root" in proc.stdout
    names = [p.stem for p in MODULES if p.stem != "__main__"]
    code = (
        "import importlib, sys\n"
        f"for name in {names!r}:\n"
        "    importlib.import_module('bootforge_agent.' + name)\n"
        "assert 'bootforge' not in sys.modules, 'the copy reached the dev tree'\n"
        "try:\n"
        "    import bootforge\n"
        "except ImportError:\n"
        "    print('isolated')\n"
    )
    proc = isolated_python(root, "-c", code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "isolated"


# Imports that cost tens of milliseconds on a fast host (far more under TCG) and that lookup does not need.
SLOW_FOR_LOOKUP = {
    "dataclasses",
    "inspect",
    "pathlib",
    "threading",
    "typing",
    "ast",
    "subprocess",
    "tempfile",
}


def test_lookup_path_stays_light(tmp_path: Path) -> None:
    root = copy_as_top_level(tmp_path)
    code = (
        "import sys\n"
        "import bootforge_agent.__main__, bootforge_agent.loop\n"
        f"print(sorted(set(sys.modules) & set({sorted(SLOW_FOR_LOOKUP)!r})))\n"
    )
    proc = isolated_python(root, "-c", code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
