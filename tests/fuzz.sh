#!/usr/bin/env bash
# Fuzzes the parts of rollgate that read untrusted bytes, for a bounded time:
#
#   tests/fuzz.sh [SECONDS_PER_TARGET]      (default 60; each target runs that long, in turn)
#
# Targets (fuzz/fuzz_targets/, cargo-fuzz layout, its own workspace):
#   spec            rollout spec text -> RolloutSpec::parse / parse_resolved; an accepted spec
#                   must come back equal from JSON (the etcd record) and from TOML.
#   unpack          raw tar bytes (header checksums fixed up, then gzipped) or a gzip stream ->
#                   the agent's unpacker; nothing may land outside the release dir, no hard
#                   link may lead out, and an accepted archive has no symlink leading out.
#   unpack_entries  the same checks on well-formed archives of hostile entries (names and links
#                   from a few parts, `..`, reserved and absolute names, every entry type).
#   identity        DER certificate bytes / URI text -> tls::Identity::{from_cert_der,parse_uri}.
#
# Any panic, sanitizer report, timeout (-timeout) or memory blow-up (-rss_limit_mb) fails the
# run: the script goes on with the other targets, then exits 1. The input is saved under
# fuzz/artifacts/TARGET/; replay it with `fuzz/target/<host>/release/TARGET FILE` (or
# `cargo fuzz run TARGET FILE`). Seeds are committed in fuzz/seeds/TARGET/; what libFuzzer
# finds on the way is kept in fuzz/corpus/TARGET/ (not committed), so later runs start there.
#
# Needs cargo-fuzz (installed here with `cargo install cargo-fuzz --locked` when missing) and a
# compiler that takes -Z flags: the nightly toolchain when rustup has one, else stable with
# RUSTC_BOOTSTRAP=1. FUZZ_TOOLCHAIN=stable|nightly forces one; FUZZ_TARGETS="spec unpack"
# picks targets; FUZZ_RSS_LIMIT_MB (default 2048) and FUZZ_TIMEOUT (seconds per input,
# default 10) bound each input. Builds go to fuzz/target, not the workspace's target dir.
set -euo pipefail

SECONDS_PER_TARGET=${1:-60}
RSS_LIMIT_MB=${FUZZ_RSS_LIMIT_MB:-2048}
INPUT_TIMEOUT=${FUZZ_TIMEOUT:-10}
case $SECONDS_PER_TARGET in
'' | *[!0-9]*)
    echo "usage: $0 [SECONDS_PER_TARGET]" >&2
    exit 2
    ;;
esac

ROOT=$(cd "$(dirname "$0")/.." && pwd)
FUZZ=$ROOT/fuzz
cd "$ROOT"

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "== installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

# Which toolchain: nightly if there is one, else stable told to accept -Z flags.
toolchain=${FUZZ_TOOLCHAIN:-}
if [[ -z $toolchain ]]; then
    if command -v rustup >/dev/null && rustup toolchain list | grep -q '^nightly'; then
        toolchain=nightly
    else
        toolchain=stable
    fi
fi
cargo_cmd=(cargo)
if command -v rustup >/dev/null; then
    cargo_cmd=(cargo "+$toolchain")
fi
if [[ $toolchain != nightly ]]; then
    export RUSTC_BOOTSTRAP=1
fi
rustc_cmd=(rustc)
command -v rustup >/dev/null && rustc_cmd=(rustup run "$toolchain" rustc)
host=$("${rustc_cmd[@]}" -vV | sed -n 's/^host: //p')
echo "== toolchain: $toolchain${RUSTC_BOOTSTRAP:+ (RUSTC_BOOTSTRAP=1)}, host $host"

# One build for all targets (cargo fuzz run would rebuild per target).
echo "== building the fuzz targets (fuzz/target)"
"${cargo_cmd[@]}" fuzz build --fuzz-dir "$FUZZ"
bin_dir=$FUZZ/target/$host/release

targets=${FUZZ_TARGETS:-$("${cargo_cmd[@]}" fuzz list --fuzz-dir "$FUZZ")}

# Each run's scratch files (the unpack targets write a release dir per input) go to a dir of
# their own, on tmpfs when there is one: fsync there costs nothing.
scratch_parent=/tmp
[[ -d /dev/shm && -w /dev/shm ]] && scratch_parent=/dev/shm
scratch=$(mktemp -d "$scratch_parent/rollgate-fuzz.XXXXXX")
trap 'rm -rf "$scratch"' EXIT
logs=$FUZZ/target/logs
mkdir -p "$logs"

failed=()
summary=()
for t in $targets; do
    corpus=$FUZZ/corpus/$t
    artifacts=$FUZZ/artifacts/$t
    mkdir -p "$corpus" "$artifacts" "$scratch/$t"
    args=("$corpus")
    [[ -d $FUZZ/seeds/$t ]] && args+=("$FUZZ/seeds/$t")
    [[ -f $FUZZ/$t.dict ]] && args+=("-dict=$FUZZ/$t.dict")
    args+=(
        "-max_total_time=$SECONDS_PER_TARGET"
        "-rss_limit_mb=$RSS_LIMIT_MB"
        "-timeout=$INPUT_TIMEOUT"
        "-artifact_prefix=$artifacts/"
        -print_final_stats=1
    )
    log=$logs/$t.log
    echo "== $t: ${SECONDS_PER_TARGET}s (log: ${log#"$ROOT"/})"
    rc=0
    TMPDIR=$scratch/$t "$bin_dir/$t" "${args[@]}" >"$log" 2>&1 || rc=$?
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    per_sec=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
    corp=$(grep -o 'corp: [0-9]*/[0-9]*[a-zA-Z]*' "$log" | tail -1 | cut -d' ' -f2)
    if [[ $rc -eq 0 ]]; then
        result=ok
    else
        artifact=$(sed -n 's/.*Test unit written to //p' "$log" | tail -1)
        result="FAILED (exit $rc${artifact:+, input saved to ${artifact#"$ROOT"/}})"
        failed+=("$t")
        echo "-- $t failed; end of its log:"
        grep -v -E '^#[0-9]+\s+(NEW|REDUCE|pulse)' "$log" | tail -40
    fi
    line=$(printf '%-15s runs %-10s (%s/s)  corpus %-12s %s' \
        "$t" "${runs:-?}" "${per_sec:-?}" "${corp:-?}" "$result")
    echo "$line"
    summary+=("$line")
done

echo "== summary (${SECONDS_PER_TARGET}s per target, toolchain $toolchain)"
printf '%s\n' "${summary[@]}"
if [[ ${#failed[@]} -gt 0 ]]; then
    echo "FAILED: ${failed[*]}" >&2
    exit 1
fi
