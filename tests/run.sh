#!/usr/bin/env bash
# rollgate's test suite: unit tables, then end-to-end tests that start a real etcd, a
# coordinator and agents as processes on 127.0.0.1, then every fuzz target for a short bounded
# time (tests/fuzz.sh). Installs etcd-server and protobuf-compiler with apt when run as root and
# they are missing, and cargo-fuzz from crates.io.
#
#   tests/run.sh                  FUZZ_SECONDS (default 10) sets the fuzz time per target
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=../deploy/ensure-deps.sh
. deploy/ensure-deps.sh
rollgate_ensure_deps test
# The build and the end-to-end tests need room: ~10 GB for target/ and a few GB for the fleets'
# temporary directories. Say so up front rather than fail in the linker with "Bus error".
target_dir="${CARGO_TARGET_DIR:-target}"
mkdir -p "$target_dir"
free_gb=$(df -Pk "$target_dir" | awk 'NR==2 { print int($4 / 1048576) }')
if [ "$free_gb" -lt 12 ]; then
  echo "tests/run.sh: only ${free_gb} GB free where $target_dir is; the build and tests need about 12 GB." >&2
  echo "  Free some space (an old target/ directory: cargo clean) and run again." >&2
  exit 1
fi
# The edge agent (no systemd or container backend: --no-default-features), kept aside for
# edge_agent.rs; built first, as the builds below put the full agent back in its place.
cargo build -p rollgate-agent --no-default-features
mkdir -p "$target_dir/debug/edge"
cp "$target_dir/debug/rollgate-agent" "$target_dir/debug/edge/rollgate-agent"
# The agent as released (no fault injection), kept aside for fault_injection_build.rs, which
# checks that such an agent refuses the test-only crash setting. Same features everywhere else
# as the build below, so only the agent and coordinator crates are compiled twice.
cargo build --workspace --bins
no_fault_dir="$target_dir/debug/no-fault-injection"
mkdir -p "$no_fault_dir"
cp "$target_dir/debug/rollgate-agent" "$no_fault_dir/rollgate-agent"
# The Debian packages, from these same binaries (PROFILE=dev: the release packaging with debug
# binaries, so CI builds no release profile); system_manager_packages.rs installs them in a
# Debian container with systemd as PID 1. deploy/package.sh installs cargo-deb if missing.
PROFILE=dev deploy/package.sh
# The test binaries carry the fault-injection hooks (crash points, pause points); release and
# package builds never enable the feature. `cargo test` below takes the same features, or it
# would rebuild the binaries without them.
features=rollgate-agent/fault-injection,rollgate-coordinator/fault-injection
cargo build --workspace --bins --features "$features"
# The previous protocol's coordinator and agent, for the mixed-version tests (built once).
tests/old-bins.sh >/dev/null
# End-to-end test files run one after another (each starts its own fleet). Each test's output
# is captured and printed with it (--show-output: what the observers saw, the worst unavailable
# count against the budget, for passing tests too), so a failing test's reason is never mixed
# with the output of the tests running beside it.
# A failing test's reason is repeated at the end (backtraces off), where a CI summary shows it.
log="$target_dir/test-output.log"
set +e
RUST_BACKTRACE=0 cargo test --workspace --no-fail-fast --features "$features" -- --show-output 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
set -e
if [ "$rc" -ne 0 ]; then
  tests/failures.sh "$log"
  exit "$rc"
fi
# The fuzz targets (their own crate, outside the workspace) stay lint clean, and each runs for
# FUZZ_SECONDS; any crash, timeout or memory blow-up fails the run (tests/fuzz.sh installs
# cargo-fuzz if needed and names the saved input). Longer runs: tests/fuzz.sh 60.
cargo clippy --manifest-path fuzz/Cargo.toml --bins -- -D warnings
fuzz_start=$SECONDS
tests/fuzz.sh "${FUZZ_SECONDS:-10}"
echo "tests/run.sh: fuzzing took $((SECONDS - fuzz_start))s (build included)"
