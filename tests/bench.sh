#!/usr/bin/env bash
# rollgate's benchmarks against DESIGN.md's targets: builds every binary in release mode and
# runs rollgate-bench, which starts real fleets on 127.0.0.1 (etcd, a coordinator, agents) and
# prints each figure as `name: value (bound: X) OK|OVER`. Measurements, not tests: an OVER of a
# design target does not fail the run; an OVER of an `[enforced]` bound (the agent's idle memory,
# issue 13) exits non-zero. Arguments go to rollgate-bench, e.g.
#   tests/bench.sh --idle-secs 20
#   tests/bench.sh --only agent-rss --rss-agents 5      # idle agent RSS, metrics off and on
#   tests/bench.sh --only handover,halt --hosts 10
#   tests/bench.sh --only scale --scale-agents 1000 --metrics on    # then --metrics off
#   tests/bench.sh --only swarm --swarm-agents 1000   # simulated hosts from one process (issue 17)
#   tests/bench.sh --only big-artifact     # 200 MB staged on 50 agents through one coordinator:
#       its peak RSS, the agents' peak RSS, MB/s against plain tools doing the same job over
#       TLS in this run (openssl s_server -> curl | tee | openssl dgst; speed and dd beside),
#       a kill -9 mid-download that must resume, and one agent alone's MB/s (--artifact-agents,
#       --artifact-mb; --artifact-bins DIR runs another build's coordinator and agent, for
#       before/after)
# KEEP_TEST_DIRS=1 keeps every fleet's directory (logs) for a look afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=../deploy/ensure-deps.sh
. deploy/ensure-deps.sh
rollgate_ensure_deps
cargo build --release --workspace --bins
# The harness takes rollgate's binaries from the directory rollgate-bench runs from.
exec "${CARGO_TARGET_DIR:-target}/release/rollgate-bench" "$@"
