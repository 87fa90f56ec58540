#!/usr/bin/env bash
# Runs the webhook on this machine with a self-signed certificate; needs only Python 3.11+.
# Extra arguments go to `gateway-yeeter serve`, e.g. ./hack/run-local.sh --secure-port 9443.
set -euo pipefail
cd "$(dirname "$0")/.."

venv=.venv
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --upgrade pip
fi
# Quick when nothing changed; picks up new dependencies after a pull.
"$venv/bin/pip" install --quiet -e .

exec "$venv/bin/gateway-yeeter" serve --self-signed --self-signed-dir .local/certs \
  --bind-address 127.0.0.1 "$@"
