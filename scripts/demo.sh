#!/usr/bin/env bash
# Sets up dockerconnect in a virtualenv and runs the demonstration.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -e . 2>&1 \
    | grep -v "^WARNING: Location" || true
exec .venv/bin/python examples/quickstart.py
