#!/usr/bin/env bash
# Runs the nemesis suite (tests/tests/nemesis.rs) over many seeds, one after another, for as
# long as asked:
#
#   tests/nemesis.sh [--from SEED] [--seeds N] [--for DURATION] [--jobs J] [--first S,S]
#
#   --from SEED     first seed (default 1000; CI runs seeds 2, 1034, 1061, 1140 through tests/run.sh)
#   --seeds N       stop after N seeds (default: no limit)
#   --for DURATION  stop starting new seeds after DURATION (sleep(1) syntax: 90m, 2h; default 1h)
#   --jobs J        run J seeds at a time, each its own fleet (default 1; 2 fit a 2-core machine)
#   --first S,S     run these seeds before --from's (regression seeds, e.g. 1034)
#
# Each seed's report (schedule, worst values, violations) goes to target/nemesis/SEED.log; a
# line per seed and a summary go to standard output. Exits 1 if any seed broke a promise;
# replay one with `NEMESIS_SEEDS=SEED cargo test -p rollgate-tests --test nemesis -- --nocapture`.
# Needs what tests/run.sh installs (etcd, nftables, iproute2) and root (network namespaces).
set -euo pipefail
cd "$(dirname "$0")/.."
from=1000 limit=0 budget=1h jobs=1 first=
while [ $# -gt 0 ]; do
  case $1 in
  --from) from=$2; shift 2 ;;
  --seeds) limit=$2; shift 2 ;;
  --for) budget=$2; shift 2 ;;
  --jobs) jobs=$2; shift 2 ;;
  --first) first=$2; shift 2 ;;
  *) echo "usage: $0 [--from SEED] [--seeds N] [--for DURATION] [--jobs J] [--first S,S]" >&2; exit 2 ;;
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
rm -f target/nemesis/*.failed
# One seed: its report to target/nemesis/SEED.log, one line to stdout, a marker if it failed.
one() {
  local seed=$1 log=target/nemesis/$1.log
  rm -f "target/nemesis/$seed.failed"
  if NEMESIS_SEEDS=$seed ROLLGATE_BIN_DIR=$bins "$bins/deps/nemesis" --nocapture >"$log" 2>&1; then
    echo "seed $seed: ok    $(grep -m1 'worst' "$log" | sed 's/^nemesis seed [0-9]*: //')"
  else
    echo "seed $seed: FAILED (target/nemesis/$seed.log)"
    grep -a "VIOLATION\|^Error\|panicked" "$log" | head -5 | sed 's/^/    /' || true
    touch "target/nemesis/$seed.failed"
  fi
}
queue=()
[ -n "$first" ] && IFS=, read -r -a queue <<<"$first"
next=$from ran=0 failed=()
started=$(date +%s)
running=0
while [ "$(date +%s)" -lt "$end" ] && { [ "$limit" -eq 0 ] || [ "$ran" -lt "$limit" ]; }; do
  if [ ${#queue[@]} -gt 0 ]; then
    seed=${queue[0]} queue=("${queue[@]:1}")
  else
    seed=$next next=$((next + 1))
  fi
  one "$seed" &
  ran=$((ran + 1)) running=$((running + 1))
  if [ "$running" -ge "$jobs" ]; then
    wait -n || true
    running=$((running - 1))
  fi
done
wait
for f in target/nemesis/*.failed; do
  if [ -e "$f" ]; then failed+=("$(basename "$f" .failed)"); fi
done
echo "nemesis: $ran seeds in $(( $(date +%s) - started )) s ($jobs at a time), ${#failed[@]} failed${failed:+: ${failed[*]}}"
[ ${#failed[@]} -eq 0 ]
