#!/usr/bin/env bash
# Runs host.py with wasmtime-py (pinned in requirements.txt) from a project-local
# virtual environment, made on first use in the workspace's target/ directory.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../../../.." && pwd)"
venv="${CONSENTRY_PY_VENV:-$root/target/component-python}"
stamp="$venv/.requirements"
if ! cmp -s "$here/requirements.txt" "$stamp" 2>/dev/null; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$here/requirements.txt"
    cp "$here/requirements.txt" "$stamp"
fi
exec "$venv/bin/python" "$here/host.py" "$@"
