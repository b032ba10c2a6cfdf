#!/usr/bin/env bash
# Installs the API fuzzer the contract test runs (tests/api_contract.rs):
# schemathesis, pinned, in a virtual environment of its own under target/
# (nothing is installed system-wide). Idempotent: a second run does nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=4.32.5
VENV=target/contract-venv
if [ -x "$VENV/bin/st" ] && "$VENV/bin/st" --version 2>/dev/null | grep -q "$VERSION"; then
    exit 0
fi
./scripts/python-venv.sh "$VENV" "schemathesis==$VERSION"
"$VENV/bin/st" --version
