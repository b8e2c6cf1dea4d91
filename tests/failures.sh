#!/usr/bin/env bash
# Prints why each failed test failed, from a `cargo test -- --show-output` log: the test's name
# and the end of its captured output (where its error or panic is), one test after another.
#
#   tests/failures.sh target/test-output.log [LINES]     at most LINES per test (default 40)
set -euo pipefail
log="$1"
lines="${2:-40}"
# Each test binary's report ends with 'failures:' and the failed tests' names, indented.
mapfile -t failed < <(awk '
  /^failures:$/ { list = 1; next }
  list && /^    [^ ]+$/ { sub(/^    /, ""); print; next }
  { list = 0 }
' "$log" | sort -u)
echo "==== ${#failed[@]} failed test(s); why each failed (the whole output is in $log) ===="
# A test binary killed by a signal (a crash, the OOM killer) prints no 'failures:' list; cargo
# names it ("process didn't exit successfully: ... (signal: 9, SIGKILL: kill)"), and the lines
# before that are what it was doing.
grep -n "process didn't exit successfully: .*(signal: " "$log" | while IFS=: read -r at _; do
  echo "---- $(sed -n "${at}p" "$log" | cut -c1-300) ----"
  sed -n "$((at > lines ? at - lines : 1)),$((at - 1))p" "$log" | grep -v '^\s*$' | tail -n 15
done
for name in "${failed[@]}"; do
  echo "---- $name ----"
  # The test's section runs from its '---- NAME stdout ----' header to the next header or to
  # the 'failures:' list that ends the binary's report. Shown from its last panic or 'Error:'
  # line (the reason, after any logs the harness dumped), else its end.
  awk -v head="---- $name stdout ----" -v max="$lines" '
    $0 == head { on = 1; next }
    on && (/^---- .* stdout ----$/ || /^failures:$/) { on = 0 }
    on { n++; line[n] = $0; if ($0 ~ /panicked at|^Error: /) from = n }
    END {
      if (!from) from = n - max + 1
      if (from < 1) from = 1
      for (i = from; i <= n && i < from + max; i++) print line[i]
    }
  ' "$log"
done
