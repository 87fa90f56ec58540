#!/usr/bin/env bash
# Runs the whole test suite from a fresh machine: installs the Python test dependencies into
# .venv, builds the pinned kube-apiserver, etcd and kustomize through the Go module proxy
# (cached, so later runs skip it), then lint, types, and every test folder.
# Extra arguments go to pytest, e.g. ./hack/test.sh tests/unit -x.
set -euo pipefail
cd "$(dirname "$0")/.."

venv=.venv
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
"$venv/bin/pip" install --quiet --upgrade pip
"$venv/bin/pip" install --quiet -e '.[test]'

echo "== kube-apiserver, etcd and kustomize (built once, then cached)"
start=$(date +%s)
./hack/kube-binaries.sh
echo "   ready after $(( $(date +%s) - start ))s"

echo "== ruff"
"$venv/bin/ruff" check .
echo "== mypy --strict"
"$venv/bin/mypy"

echo "== pytest"
"$venv/bin/python" -m pytest -p no:cacheprovider "$@"
