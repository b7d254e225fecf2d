#!/usr/bin/env bash
# Runs after `bazel test //...` (README's test command): Bazel reports a test
# that skipped itself (no GPU here) as PASSED, so this prints every test that
# said "SKIPPED:" in its log, then one closing count line.
set -uo pipefail
cd "$(dirname "$0")/.."
logs="$(bazel info bazel-testlogs 2>/dev/null)"
passed=0
skipped=0
while read -r target; do
  path="${target#//}"
  log="$logs/${path/://}/test.log"
  [[ -f "$log" ]] || continue
  reason=$(grep -m1 -o "SKIPPED: .*" "$log")
  if [[ -n "$reason" ]]; then
    echo "$target: $reason"
    skipped=$((skipped + 1))
  else
    passed=$((passed + 1))
  fi
done < <(bazel query 'tests(//...)' 2>/dev/null)
echo "${passed} passed, 0 failed, ${skipped} skipped"
