"""The Python the agent runs on: Debian's interpreter with only the standard library it imports.

Which modules: every import statement in the agent's source (including those inside functions) plus
a few the agent reaches indirectly (encodings for str.encode, runpy for ``-m``), each imported for real
by Debian's interpreter over Debian's full standard library; whatever ends up in sys.modules is
shipped. Modules are shipped as sourceless .pyc only (``x.pyc`` where ``x.py`` was), compiled by that
same interpreter with unchecked-hash headers (no mtimes: reproducible), in sorted order in one fresh
process (marshal output depends on what the process compiled before).

The interpreter is run at build time through the packaged dynamic loader with the packaged libraries,
so the build needs no Python of the distribution's version on the build machine.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import shutil
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from bootforge.ramdisk.debs import RamdiskError

__all__ = [
    "AGENT_PACKAGE",
    "EXTRA_MODULES",
    "Interpreter",
    "agent_imports",
    "cached_compile",
    "compile_tree",
    "stdlib_closure",
]

AGENT_PACKAGE = "bootforge_agent"

# Reached without an import statement in the agent: runpy for `python3 -m`, the codecs str.encode()
# looks up by name (idna: http.client encodes a non-ASCII host with it), site for an interactive
# python3 on the console.
EXTRA_MODULES = (
    "runpy", "site", "encodings.idna", "encodings.ascii", "encodings.latin_1", "encodings.utf_8_sig",
)  # fmt: skip


@dataclass(frozen=True)
class Interpreter:
    """A Python started through an explicit dynamic loader and library path: at build time, Debian's
    packaged python3.X with the packaged libraries (the build machine's own need not match)."""

    loader: Path  # ld-linux-x86-64.so.2
    library_path: tuple[Path, ...]
    executable: Path  # .../usr/bin/python3.X inside a tree holding .../usr/lib/python3.X

    def run(self, args: Sequence[str], stdin: str = "") -> str:
        argv = [
            str(self.loader), "--library-path", ":".join(map(str, self.library_path)),
            str(self.executable), "-I", "-S", *args,
        ]  # fmt: skip
        proc = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=600, check=False)
        if proc.returncode != 0:
            raise RamdiskError(f"the packaged Python failed: {proc.stderr.strip()[-1500:]}")
        return proc.stdout


def agent_imports(agent_dir: Path) -> tuple[list[str], list[str]]:
    """(modules the agent imports, names that may be submodules) from its source, by reading it.

    ``from a.b import c`` imports a.b, and a.b.c if c is a module: the second list holds such guesses,
    which may fail to import without it being an error.
    """
    required: set[str] = set()
    maybe: set[str] = set()
    for path in sorted(agent_dir.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                required.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                required.add(node.module)
                maybe.update(f"{node.module}.{alias.name}" for alias in node.names)
    own = sorted(m for m in required if m == "bootforge" or m.startswith("bootforge."))
    if own:
        raise RamdiskError(
            f"the agent imports {', '.join(own)}: in the ramdisk it is the top-level package "
            f"{AGENT_PACKAGE} and must import its own modules relatively"
        )
    return sorted(required), sorted(maybe - required)


_CLOSURE_SCRIPT = r"""
import importlib, json, pkgutil, sys
req = json.loads(sys.stdin.read())
sys.path.insert(0, req["agent_root"])
missing = []
for name in req["required"]:
    try:
        importlib.import_module(name)
    except ImportError as e:
        missing.append(f"{name} ({e})")
for name in req["maybe"]:
    try:
        importlib.import_module(name)
    except ImportError:
        pass
pkg = importlib.import_module(req["package"])
for info in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."):
    if not info.name.endswith(".__main__"):
        importlib.import_module(info.name)
files = sorted({m.__file__ for m in list(sys.modules.values()) if getattr(m, "__file__", None)})
print(json.dumps({"files": files, "missing": missing}))
"""


def stdlib_closure(python: Interpreter, stdlib: Path, agent_root: Path, modules: Iterable[str],
                   maybe: Iterable[str]) -> list[str]:  # fmt: skip
    """Paths (relative to `stdlib`) of the standard library files loaded by importing `modules` and
    every module of the agent package found under `agent_root`."""
    request = {
        "agent_root": str(agent_root),
        "package": AGENT_PACKAGE,
        "required": sorted({*modules, *EXTRA_MODULES}),
        "maybe": sorted(maybe),
    }
    result = json.loads(python.run(["-c", _CLOSURE_SCRIPT], json.dumps(request)))
    if result["missing"]:
        raise RamdiskError(
            "the agent imports modules Debian's Python does not provide: " + "; ".join(result["missing"])
        )
    prefix = str(stdlib) + os.sep
    return sorted(f[len(prefix) :] for f in result["files"] if f.startswith(prefix))


_COMPILE_SCRIPT = r"""
import json, py_compile, sys
for src, dst, shown in json.loads(sys.stdin.read()):
    py_compile.compile(src, cfile=dst, dfile=shown, doraise=True,
                       invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)
"""


def compile_tree(python: Interpreter, sources: dict[str, Path], out: Path, shown_under: str) -> None:
    """Compile {relative .py path: source file} to ``out/<relative path>c``.

    Tracebacks name the file as ``<shown_under>/<relative path>``, where the source would have been.
    """
    jobs = [
        [str(src), str(out / (rel + "c")), f"{shown_under}/{rel}"] for rel, src in sorted(sources.items())
    ]
    python.run(["-c", _COMPILE_SCRIPT], json.dumps(jobs))


def cached_compile(python: Interpreter, sources: dict[str, Path], cache: Path, key_parts: Sequence[str],
                   shown_under: str) -> Path:  # fmt: skip
    """compile_tree into ``cache/pyc-<key>``, reused when the key (inputs named by the caller) matches."""
    digest = hashlib.sha256("\0".join([*key_parts, *sorted(sources)]).encode()).hexdigest()[:16]
    out = cache / f"pyc-{digest}"
    if out.is_dir():
        return out
    tmp = cache / f".pyc-{digest}.{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    compile_tree(python, sources, tmp, shown_under)
    try:
        tmp.rename(out)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
