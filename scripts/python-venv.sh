#!/usr/bin/env bash
# Usage: scripts/python-venv.sh DIR REQUIREMENT...
# Makes the Python virtual environment DIR afresh and installs the
# requirements into it from PyPI (nothing of Python is installed
# system-wide), installing Debian's python3-venv first where Python lacks
# it. The install scripts of the tests' Python tools call it.
set -euo pipefail
venv=$1
shift
if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
    # Debian splits venv off python3.
    as_root=()
    [ "$(id -u)" = 0 ] || as_root=(sudo -n)
    export DEBIAN_FRONTEND=noninteractive
    "${as_root[@]}" apt-get update -qq
    "${as_root[@]}" apt-get install -y -qq --no-install-recommends python3-venv >/dev/null
fi
rm -rf "$venv"
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check "$@"
