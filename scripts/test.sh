#!/usr/bin/env bash
# Runs every test of the workspace: unit, property, integration (real node
# processes on loopback, a real PostgreSQL server), the example's tests and
# doc tests. On a fresh machine it first installs what the tests need:
# Debian's `postgresql` package (the tests start throwaway servers from its
# initdb and pg_ctl; set GRANARY_TEST_PG=postgres://… to use a server of
# your own instead).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-postgres.sh
cargo test --workspace --locked --examples --tests --lib --bins
cargo test --workspace --locked --doc
