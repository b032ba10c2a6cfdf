#!/usr/bin/env bash
# Runs every test of the workspace: unit, property, integration (real node
# processes on loopback, a real PostgreSQL server), the example's tests and
# doc tests, the API contract test. On a fresh machine it first installs
# what the tests need: Debian's `postgresql` package (the tests start
# throwaway servers from its initdb and pg_ctl; set GRANARY_TEST_PG=
# postgres://… to use a server of your own instead), the API fuzzer
# schemathesis from PyPI in a virtual environment under target/, and for
# the dashboard's browser test Debian's chromium and chromium-driver with
# selenium from PyPI (another virtual environment under target/).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-postgres.sh
./scripts/install-schemathesis.sh
./scripts/install-chromium.sh
# cargo-nextest runs each test in a process of its own, with the time
# limits of .config/nextest.toml: a test that hangs fails by name instead
# of stalling the run. Without it, plain cargo test runs the same tests.
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace --locked --examples --tests --lib --bins
else
    echo "cargo-nextest not found; running the tests with cargo test (no per-test time limit)" >&2
    cargo test --workspace --locked --examples --tests --lib --bins
fi
cargo test --workspace --locked --doc
# The OTLP exporter is behind a cargo feature: its test builds the node
# with it (tests/otlp.rs: two members exporting to a collector the test
# runs).
cargo test --locked --features otlp --test otlp
