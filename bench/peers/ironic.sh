#!/usr/bin/env bash
# Install OpenStack Ironic (the peer that bench/control_plane.py measures bootforge against)
# from PyPI into its own venv, outside the repo, and check that its console scripts run.
#
#   bench/peers/ironic.sh [VENV_DIR]        default: /opt/bootforge-bench/ironic-venv
#
# The per-run config (noauth, rpc_transport=none, fake-hardware, SQLite, automated_clean=false)
# and the schema are written by bench/control_plane.py into a fresh temp dir for every run, so
# that runs never share state; `python bench/control_plane.py --target ironic` is the entry point.
set -euo pipefail

VENV="${1:-/opt/bootforge-bench/ironic-venv}"
IRONIC_SPEC="${IRONIC_SPEC:-ironic>=39,<40}"
# Ironic needs Python >= 3.11; prefer the interpreter the repo's venv was built from.
PYTHON="${PYTHON:-}"
if [[ -z "$PYTHON" ]]; then
    for cand in /work/main/.venv/bin/python python3.11 python3.12 python3; do
        if command -v "$cand" >/dev/null 2>&1; then PYTHON="$cand"; break; fi
    done
fi
BASE_PY="$("$PYTHON" -c 'import sys; print(sys.base_prefix)')/bin/python3"

case "$VENV" in
    /work/main/*) echo "refusing to install Ironic inside the repo ($VENV)" >&2; exit 2 ;;
esac

if [[ ! -x "$VENV/bin/python" ]]; then
    mkdir -p "$(dirname "$VENV")"
    "$BASE_PY" -m venv "$VENV"
fi
"$VENV/bin/pip" install --quiet --upgrade pip
"$VENV/bin/pip" install "$IRONIC_SPEC"

for script in ironic ironic-dbsync; do
    if [[ ! -x "$VENV/bin/$script" ]]; then
        echo "console script $script missing from $VENV/bin" >&2; exit 1
    fi
done
"$VENV/bin/python" -c 'import importlib.metadata as m; print("ironic", m.version("ironic"))'
echo "Ironic venv ready: $VENV"
