#!/usr/bin/env bash
# Builds the coordinator and agent of the previous protocol version (the last commit before
# protocol 2), for tests/tests/mixed_versions.rs, and prints the directory holding them.
# Idempotent: a finished build is reused. Needs the git history (a clone of the repository).
# usage: tests/old-bins.sh            -> prints e.g. target/old/c8908ce/target/debug
set -euo pipefail
cd "$(dirname "$0")/.."
# Protocol 1: the last commit before the version fields (see proto/src/version.rs).
commit="${ROLLGATE_OLD_COMMIT:-c8908ce}"
root="$PWD/${CARGO_TARGET_DIR:-target}/old/$commit"
bins="$root/target/debug"
if [ -x "$bins/rollgate-coordinator" ] && [ -x "$bins/rollgate-agent" ]; then
  echo "$bins"
  exit 0
fi
if ! git cat-file -e "$commit^{commit}" 2>/dev/null && [ -f "$(git rev-parse --git-dir)/shallow" ]; then
  echo "tests/old-bins.sh: this clone is shallow; fetching its history for $commit" >&2
  git fetch --quiet --unshallow >&2 || true
fi
if ! git cat-file -e "$commit^{commit}" 2>/dev/null; then
  echo "tests/old-bins.sh: commit $commit is not in this clone; fetch the full history (git fetch --unshallow)" >&2
  exit 1
fi
rm -rf "$root/src"
mkdir -p "$root"
git archive --format=tar --prefix=src/ "$commit" | tar -x -C "$root"
echo "tests/old-bins.sh: building rollgate-coordinator and rollgate-agent at $commit (protocol 1)" >&2
CARGO_TARGET_DIR="$root/target" cargo build --quiet --manifest-path "$root/src/Cargo.toml" \
  --bins -p rollgate-coordinator -p rollgate-agent >&2
echo "$bins"
