#!/usr/bin/env bash
# Fuzzes the parts of rollgate that read untrusted bytes, for a bounded time:
#
#   tests/fuzz.sh [SECONDS_PER_TARGET]      (default 60; each target runs that long, in turn;
#                                            tests/run.sh runs it with 10)
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
#   agent_config    agent config text -> Config::parse (TOML and every field check), then
#                   check_tls and the [metrics] TLS acceptor, as rollgate-agent does at start;
#                   an accepted config has a valid host id, an absolute state dir, unique valid
#                   service names and durations a timer can be armed with. Does not create the
#                   state dir or start services; skips text naming /dev, /proc or /sys.
#   coordinator_message  coordinator -> agent: a sequence of CoordinatorMessages (welcome,
#                   update and stage orders, refusal) into the agent's real session handler
#                   on a real Executor with a fresh journal: token fencing, release, digest and
#                   signature checks (one service pins a key, fuzz/keys/), the one answer per
#                   order. The update procedure itself (fetch, swap, probes) does not run.
#   agent_message   agent -> coordinator: a session's AgentMessages (hello, heartbeat, status,
#                   progress, result, staged) through sessions::admit: the hello's checks
#                   against the certificate, the bounded host record, status ordering, a
#                   result settling the held grant once, the etcd keys built from rollout ids.
#                   Not the etcd transactions, the stale-token counter raise, stage ownership.
#   control         operator -> coordinator: one control request (first byte: its kind) through
#                   the role rule for every role, the audit line, spec, pin, host id, event
#                   filter and download checks. Not what needs etcd (reading/changing rollouts,
#                   hosts, pins; a deployer's scope for a rollout named by id; uploads).
#
# The message targets read length-delimited protobuf; their seeds come from
# `cargo run --manifest-path fuzz/Cargo.toml --example seeds` (real messages, and the fuzz-only
# key pair in fuzz/keys/ that signs one of them).
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
# --target-dir: here whatever CARGO_TARGET_DIR says (the workspace's builds go there).
"${cargo_cmd[@]}" fuzz build --fuzz-dir "$FUZZ" --target-dir "$FUZZ/target"
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
