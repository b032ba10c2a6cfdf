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
if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
    # Debian splits venv off python3.
    as_root=()
    [ "$(id -u)" = 0 ] || as_root=(sudo -n)
    export DEBIAN_FRONTEND=noninteractive
    "${as_root[@]}" apt-get update -qq
    "${as_root[@]}" apt-get install -y -qq --no-install-recommends python3-venv >/dev/null
fi
rm -rf "$VENV"
python3 -m venv "$VENV"
"$VENV/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$VERSION"
"$VENV/bin/st" --version
