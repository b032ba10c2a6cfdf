#!/usr/bin/env bash
# Runs every test of the workspace: unit, property, integration (real node
# processes on loopback), the example's tests and doc tests.
# Installs nothing today: the embedded store needs no server. Later stores
# (PostgreSQL) add their set-up here, so a fresh machine needs only this.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --workspace --locked --examples --tests --lib --bins
cargo test --workspace --locked --doc
