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
  dir="$logs/${path/://}"
  # A sharded test (shard_count) keeps one log per shard.
  shopt -s nullglob
  test_logs=("$dir/test.log" "$dir"/shard_*_of_*/test.log)
  shopt -u nullglob
  present=()
  for log in "${test_logs[@]}"; do [[ -f "$log" ]] && present+=("$log"); done
  ((${#present[@]})) || continue
  reason=$(cat "${present[@]}" | grep -m1 -o "SKIPPED: .*")
  if [[ -n "$reason" ]]; then
    echo "$target: $reason"
    skipped=$((skipped + 1))
  else
    passed=$((passed + 1))
  fi
done < <(bazel query 'tests(//...)' 2>/dev/null)
echo "${passed} passed, 0 failed, ${skipped} skipped"
