#!/usr/bin/env bash
# The agent's builds side by side (issue 15, item 5): each feature set in release mode, its
# size as the Debian package ships it (stripped) and its idle memory (rollgate-bench
# agent-rss: idle agents with one healthy process-backend service each, connected to a real
# coordinator, worst VmRSS of 3, metrics off and on). Prints a table for the README.
#
#   deploy/agent-builds.sh          full, systemd only, container only, edge (neither)
set -euo pipefail
cd "$(dirname "$0")/.."
target="${CARGO_TARGET_DIR:-target}"
out="$target/agent-builds"
rm -rf "$out"
mkdir -p "$out"
# The coordinator, the CLI and the benchmark, in release mode.
cargo build --release --workspace --bins
declare -A features=(
  [full]=""
  [systemd-only]="--no-default-features --features systemd"
  [container-only]="--no-default-features --features container"
  [edge]="--no-default-features"
)
order=(full systemd-only container-only edge)
for name in "${order[@]}"; do
  # shellcheck disable=SC2086
  cargo build --release -p rollgate-agent ${features[$name]}
  mkdir -p "$out/$name"
  cp "$target/release/rollgate-agent" "$out/$name/rollgate-agent"
  strip -o "$out/$name/rollgate-agent.stripped" "$out/$name/rollgate-agent"
  # rollgate-bench takes every binary from ROLLGATE_BIN_DIR: this agent, the rest as built.
  for b in rollgate-coordinator rollgate; do ln -sf "$(realpath "$target/release/$b")" "$out/$name/$b"; done
done
# Put the full agent back where the release build keeps it.
cargo build --release -p rollgate-agent
printf '%-15s %-40s %10s %22s\n' build cargo "size (MB)" "idle RSS (MiB) off/on"
for name in "${order[@]}"; do
  size=$(stat -c %s "$out/$name/rollgate-agent.stripped")
  log="$out/$name/bench.log"
  ROLLGATE_BIN_DIR="$out/$name" "$target/release/rollgate-bench" --only agent-rss >"$log" 2>&1 || true
  # The worst agent's VmRSS, metrics off then on, from the benchmark's figures.
  rss=$(sed -nE 's/^ *agent idle RSS with metrics [a-z]+ \(worst of [0-9]+\): ([0-9.]+) MiB.*/\1/p' "$log" | head -n 2 | paste -sd/ -)
  printf '%-15s %-40s %10s %22s\n' "$name" "${features[$name]:-(default)}" "$(awk -v s="$size" 'BEGIN { printf "%.1f", s / 1e6 }')" "${rss:-see $log}"
done
