#!/usr/bin/env bash
# Sets up everything the checks need on a fresh machine, then runs them all:
# ruff (lint + format), mypy --strict on src/, the docs build, the quick
# benchmarks, and pytest (unit, conformance and end-to-end tests).
set -euo pipefail
cd "$(dirname "$0")/.."

# Real components for the tests: CNCF distribution (the upstream), skopeo,
# podman and umoci as clients, and redis-server (regctl is in ../shared/tools).
missing=()
for tool in docker-registry skopeo podman umoci redis-server; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if ((${#missing[@]})); then
    echo "installing Debian packages: ${missing[*]}"
    SUDO=""
    [ "$(id -u)" = 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

PYTHON="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[dev,docs,s3,redis]' 2>&1 \
    | grep -v "^WARNING: Location" || true

echo "== ruff"
.venv/bin/ruff check src tests examples benchmarks
.venv/bin/ruff format --check src tests examples benchmarks
echo "== mypy --strict"
.venv/bin/mypy --strict src
if [ -f mkdocs.yml ]; then
    echo "== mkdocs build --strict"
    .venv/bin/mkdocs build --strict -q -d "$(mktemp -d)"
fi
if [ -f benchmarks/run.py ]; then
    echo "== benchmarks (quick)"
    .venv/bin/python benchmarks/run.py --quick
fi
echo "== pytest"
.venv/bin/python -m pytest "$@"
