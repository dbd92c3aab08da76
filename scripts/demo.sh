#!/usr/bin/env bash
# Sets up dockerconnect in a virtualenv and runs the demonstration: the
# connector story in one process, then `dockerconnect serve` started for a
# moment, an image pushed into it and pulled back out with skopeo.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[server]' 2>&1 \
    | grep -v "^WARNING: Location" || true
.venv/bin/python examples/quickstart.py

missing=()
for tool in skopeo curl; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if ((${#missing[@]})); then
    echo "installing Debian packages for the server part: ${missing[*]}"
    SUDO=""
    [ "$(id -u)" = 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
echo
echo "== dockerconnect serve, for a moment"
work=$(mktemp -d)
port=$(.venv/bin/python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
.venv/bin/dockerconnect serve --port "$port" --store "$work/store" --log-level warning \
    >"$work/server.log" 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; rm -rf "$work"' EXIT
up=""
for _ in $(seq 300); do
    if curl -fs "http://127.0.0.1:$port/healthz" >/dev/null 2>&1; then up=1; break; fi
    kill -0 "$server" 2>/dev/null || break
    sleep 0.1
done
if [ -z "$up" ]; then
    echo "dockerconnect serve did not start:" >&2
    cat "$work/server.log" >&2
    exit 1
fi
# A generated image as an OCI layout (no network), pushed and pulled back.
.venv/bin/python -c 'import sys; from dockerconnect.testing import random_image; from dockerconnect.testing._images import write_oci_layout; write_oci_layout(sys.argv[1], random_image(seed=7, layers=2), tag="v1")' "$work/layout"
skopeo --insecure-policy copy -q --dest-tls-verify=false "oci:$work/layout:v1" \
    "docker://127.0.0.1:$port/demo/app:v1"
skopeo --insecure-policy copy -q --src-tls-verify=false "docker://127.0.0.1:$port/demo/app:v1" \
    "oci:$work/pulled:v1"
echo "pushed and pulled demo/app:v1 through dockerconnect serve on 127.0.0.1:$port:"
skopeo inspect --tls-verify=false --format '  digest {{.Digest}}, {{len .Layers}} layers' \
    "docker://127.0.0.1:$port/demo/app:v1"
curl -fs "http://127.0.0.1:$port/metrics" | grep '^dockerconnect_http_requests_total' | head -3
