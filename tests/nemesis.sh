#!/usr/bin/env bash
# Runs the nemesis suite (tests/tests/nemesis.rs) over many seeds, one after another, for as
# long as asked:
#
#   tests/nemesis.sh [--from SEED] [--seeds N] [--for DURATION]
#
#   --from SEED     first seed (default 1000; CI runs seeds 1-3 through tests/run.sh)
#   --seeds N       stop after N seeds (default: no limit)
#   --for DURATION  stop starting new seeds after DURATION (sleep(1) syntax: 90m, 2h; default 1h)
#
# Each seed's report (schedule, worst values, violations) goes to target/nemesis/SEED.log; a
# line per seed and a summary go to standard output. Exits 1 if any seed broke a promise;
# replay one with `NEMESIS_SEEDS=SEED cargo test -p rollgate-tests --test nemesis -- --nocapture`.
# Needs what tests/run.sh installs (etcd, nftables, iproute2) and root (network namespaces).
set -euo pipefail
cd "$(dirname "$0")/.."
from=1000 limit=0 budget=1h
while [ $# -gt 0 ]; do
  case $1 in
  --from) from=$2; shift 2 ;;
  --seeds) limit=$2; shift 2 ;;
  --for) budget=$2; shift 2 ;;
  *) echo "usage: $0 [--from SEED] [--seeds N] [--for DURATION]" >&2; exit 2 ;;
  esac
done
features=rollgate-agent/fault-injection,rollgate-coordinator/fault-injection
cargo build --workspace --bins --features "$features"
# A copy of the binaries and of the test, so a rebuild during a long run changes nothing.
exe=$(cargo test -p rollgate-tests --test nemesis --no-run 2>&1 | grep -o 'target/[a-z]*/deps/nemesis-[0-9a-f]*' | tail -1)
bins=target/nemesis/bin
rm -rf "$bins" && mkdir -p "$bins/deps"
cp "$(dirname "$exe")"/../rollgate "$(dirname "$exe")"/../rollgate-agent "$(dirname "$exe")"/../rollgate-coordinator "$(dirname "$exe")"/../rollgate-testsvc "$bins/"
cp "$exe" "$bins/deps/nemesis"
case $budget in
*h) secs=$(( ${budget%h} * 3600 )) ;;
*m) secs=$(( ${budget%m} * 60 )) ;;
*s) secs=${budget%s} ;;
*) secs=$budget ;;
esac
end=$(( $(date +%s) + secs ))
mkdir -p target/nemesis
seed=$from ran=0 failed=()
started=$(date +%s)
while [ "$(date +%s)" -lt "$end" ] && { [ "$limit" -eq 0 ] || [ "$ran" -lt "$limit" ]; }; do
  log=target/nemesis/$seed.log
  if NEMESIS_SEEDS=$seed ROLLGATE_BIN_DIR=$bins "$bins/deps/nemesis" --nocapture >"$log" 2>&1; then
    echo "seed $seed: ok    $(grep -m1 'worst' "$log" | sed 's/^nemesis seed [0-9]*: //')"
  else
    echo "seed $seed: FAILED (target/nemesis/$seed.log)"
    grep -a "VIOLATION\|^Error" "$log" | head -5 | sed 's/^/    /' || true
    failed+=("$seed")
  fi
  ran=$((ran + 1)) seed=$((seed + 1))
done
echo "nemesis: $ran seeds in $(( $(date +%s) - started )) s, ${#failed[@]} failed${failed:+: ${failed[*]}}"
[ ${#failed[@]} -eq 0 ]
