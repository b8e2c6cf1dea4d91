#!/usr/bin/env bash
# rollgate's test suite: unit tables, then end-to-end tests that start a real etcd, a
# coordinator and agents as processes on 127.0.0.1. Installs etcd-server and protobuf-compiler
# with apt when run as root and they are missing.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=../deploy/ensure-deps.sh
. deploy/ensure-deps.sh
rollgate_ensure_deps test
cargo build --workspace --bins
# End-to-end test files run one after another (each starts its own fleet); --nocapture shows
# what the observers saw (worst unavailable count against the budget).
cargo test --workspace -- --nocapture
# The fuzz targets (their own crate, outside the workspace) must keep compiling and stay lint
# clean; running them is tests/fuzz.sh, which needs cargo-fuzz and takes minutes per target.
cargo clippy --manifest-path fuzz/Cargo.toml --bins -- -D warnings
