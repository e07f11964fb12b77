"""Which standard library the agent needs, read from its source."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from bootforge.ramdisk.builder import AGENT_DIR
from bootforge.ramdisk.debs import RamdiskError
from bootforge.ramdisk.python import AGENT_PACKAGE, Interpreter, agent_imports, compile_tree, stdlib_closure


def test_imports_anywhere_in_the_source_count(tmp_path: Path) -> None:
    (tmp_path / "__init__.py").write_text("from __future__ import annotations\nimport os, json\n")
    (tmp_path / "write.py").write_text(
        "from . import common\nfrom .common import Context\n"
        "def run():\n    import http.client\n    from hashlib import sha256\n"
    )
    required, maybe = agent_imports(tmp_path)
    assert required == ["__future__", "hashlib", "http.client", "json", "os"]
    # `from hashlib import sha256` might name a submodule; relative imports are the agent's own.
    assert maybe == ["__future__.annotations", "hashlib.sha256"]


def test_an_absolute_bootforge_import_is_refused(tmp_path: Path) -> None:
    (tmp_path / "loop.py").write_text("from bootforge.agent.common import Context\n")
    with pytest.raises(RamdiskError, match="relatively"):
        agent_imports(tmp_path)


def test_the_real_agent_imports_only_the_standard_library() -> None:
    if not (AGENT_DIR / "__init__.py").is_file():
        pytest.skip("the agent package is not in this tree yet")
    required, _ = agent_imports(AGENT_DIR)
    assert "ctypes" in required or "socket" in required  # it does talk to the machine


LOADER = Path("/lib64/ld-linux-x86-64.so.2")


@pytest.fixture
def host_python() -> Interpreter:
    """This test run's own interpreter, started the way the build starts Debian's."""
    if not LOADER.exists():
        pytest.skip(f"needs the x86_64 dynamic loader {LOADER}")
    libs = tuple(p for p in (Path("/usr/lib/x86_64-linux-gnu"), Path("/lib/x86_64-linux-gnu")) if p.is_dir())
    return Interpreter(LOADER, libs, Path(sys.executable).resolve())


def _agent(root: Path) -> Path:
    pkg = root / AGENT_PACKAGE
    pkg.mkdir()
    (pkg / "__init__.py").write_text("import json\n")
    (pkg / "net.py").write_text("def fetch():\n    import http.client\n")
    return root


def test_closure_holds_what_the_agent_imports_and_nothing_of_its_own(
    host_python: Interpreter, tmp_path: Path
) -> None:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = stdlib_closure(host_python, stdlib, _agent(tmp_path), ["json", "http.client"], ["json.nothing"])
    assert {"json/__init__.py", "json/decoder.py", "http/client.py", "socket.py", "runpy.py"} <= set(files)
    assert not [f for f in files if AGENT_PACKAGE in f or f.startswith("/")]
    assert "tkinter/__init__.py" not in files


def test_a_module_python_lacks_is_an_error(host_python: Interpreter, tmp_path: Path) -> None:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    with pytest.raises(RamdiskError, match="no_such_module"):
        stdlib_closure(host_python, stdlib, _agent(tmp_path), ["no_such_module"], [])


def test_compiled_modules_are_reproducible_and_import_without_source(
    host_python: Interpreter, tmp_path: Path
) -> None:
    src = tmp_path / "src" / "greet.py"
    src.parent.mkdir()
    src.write_text("WORD = 'hello'\ndef greet(name):\n    return f'{WORD} {name}'\n")
    compile_tree(host_python, {"greet.py": src}, tmp_path / "a", "/usr/lib/python3.11")
    src.touch()  # a newer mtime must change nothing
    compile_tree(host_python, {"greet.py": src}, tmp_path / "b", "/usr/lib/python3.11")
    first, second = (tmp_path / "a" / "greet.pyc").read_bytes(), (tmp_path / "b" / "greet.pyc").read_bytes()
    assert first == second
    code = "import greet; print(greet.greet('ramdisk'), greet.__file__)"
    out = subprocess.run(
        [sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {str(tmp_path / 'a')!r}); {code}"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert out.startswith("hello ramdisk ") and out.strip().endswith("greet.pyc")
