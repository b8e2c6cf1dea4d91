#!/usr/bin/env bash
# Builds rollgate's Debian packages: rollgate-agent, rollgate-coordinator and rollgate (the
# CLI), with cargo-deb (installed from crates.io when missing), into target/debian/. Then runs
# lintian on them when it is installed (apt-get install lintian), with the overrides explained
# in deploy/debian/lintian.md.
#
#   deploy/package.sh            release build (what ships)
#   PROFILE=dev deploy/package.sh   debug binaries, for a quick install test only
#
# Install on a host: dpkg -i rollgate-agent_*.deb (and/or the coordinator, the CLI); the
# README's Install section says what comes next.
set -euo pipefail
cd "$(dirname "$0")/.."
profile=${PROFILE:-release}
if ! cargo deb --version >/dev/null 2>&1; then
  echo "== installing cargo-deb (cargo install cargo-deb --locked)"
  cargo install cargo-deb --locked
fi
if ! command -v dpkg-deb >/dev/null; then
  echo "deploy/package.sh: dpkg-deb is missing; on Debian/Ubuntu: apt-get install dpkg-dev" >&2
  exit 1
fi
# Shipped builds leave the test-only fault injection out (no --features).
packages=(rollgate-agent rollgate-coordinator rollgate)
args=()
for p in "${packages[@]}"; do args+=(-p "$p"); done
if [ "$profile" = release ]; then
  cargo build --release "${args[@]}" --bins
else
  cargo build --profile "$profile" "${args[@]}" --bins
fi
mkdir -p target/debian
debs=()
for p in "${packages[@]}"; do
  out=$(cargo deb -p "$p" --no-build --profile "$profile" --output target/debian/ 2>&1 | tail -1)
  debs+=("$out")
  echo "built $out"
done
if command -v lintian >/dev/null; then
  echo "== lintian (overrides and why: deploy/debian/lintian.md)"
  lintian --fail-on error --suppress-tags-from-file deploy/debian/lintian-suppressed "${debs[@]}"
else
  echo "lintian is not installed (apt-get install lintian); packages not linted"
fi
