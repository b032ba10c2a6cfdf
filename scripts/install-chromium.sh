#!/usr/bin/env bash
# Installs what the dashboard's browser test needs (tests/dashboard.rs):
# Debian's `chromium` and `chromium-driver` packages, and selenium (the
# Python WebDriver client, pinned) in a virtual environment of its own
# under target/ (nothing of Python is installed system-wide). Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
SELENIUM=4.27.1
VENV=target/browser-venv
if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "install-chromium: no chromium and no apt-get; install chromium and chromedriver" >&2
        exit 1
    fi
    as_root=()
    [ "$(id -u)" = 0 ] || as_root=(sudo -n)
    echo "install-chromium: installing Debian's chromium and chromium-driver packages" >&2
    export DEBIAN_FRONTEND=noninteractive
    "${as_root[@]}" apt-get update -qq
    "${as_root[@]}" apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null
fi
if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "import selenium, sys; sys.exit(selenium.__version__ != '$SELENIUM')" 2>/dev/null; then
    exit 0
fi
./scripts/python-venv.sh "$VENV" "selenium==$SELENIUM"
