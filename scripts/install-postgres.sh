#!/usr/bin/env bash
# Installs Debian's PostgreSQL server package if no initdb is found, so the
# PostgreSQL tests can start throwaway servers. Does nothing when a server
# URL is given (GRANARY_TEST_PG) or the binaries are already there.
set -euo pipefail
if [ -n "${GRANARY_TEST_PG:-}" ]; then
    exit 0
fi
if ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-postgres: no initdb and no apt-get; install PostgreSQL or set GRANARY_TEST_PG" >&2
    exit 0
fi
as_root=()
if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        as_root=(sudo -n)
    else
        echo "install-postgres: not root and no sudo; install the postgresql package or set GRANARY_TEST_PG" >&2
        exit 0
    fi
fi
echo "install-postgres: installing Debian's postgresql package" >&2
export DEBIAN_FRONTEND=noninteractive
"${as_root[@]}" apt-get update -qq
"${as_root[@]}" apt-get install -y -qq --no-install-recommends postgresql >/dev/null
