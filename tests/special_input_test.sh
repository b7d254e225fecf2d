#!/usr/bin/env bash
# The last-resort handler of the prefopt command: an exception that escapes
# ends the process with a message and a non-zero exit status, never an abort.
set -uo pipefail

prefopt="$1"
tmp="${TEST_TMPDIR:-$(mktemp -d)}"
failures=0

# expect_fail NAME EXPECTED_EXIT EXPECTED_SUBSTRING -- ARGS...
expect_fail() {
  local name=$1 code=$2 needle=$3
  shift 4
  local out rc
  out=$("$prefopt" "$@" 2>&1)
  rc=$?
  if [[ $rc -ne $code ]]; then
    echo "FAIL $name: exit $rc, expected $code; output: $out"
    failures=$((failures + 1))
  elif [[ "$out" != *"$needle"* ]]; then
    echo "FAIL $name: output lacks \"$needle\": $out"
    failures=$((failures + 1))
  else
    echo "ok   $name"
  fi
}

# The last-resort handler: no input is known to reach it, so the test hook
# throws.
PREFOPT_TEST_THROW=bad_alloc expect_fail "std::bad_alloc escaping main" 70 \
  "prefopt: internal error: out of memory (std::bad_alloc)" -- train
PREFOPT_TEST_THROW="broken invariant" expect_fail "an exception escaping main" 70 \
  "prefopt: internal error: broken invariant" -- train

if [[ $failures -ne 0 ]]; then
  echo "$failures check(s) failed"
  exit 1
fi
echo "all checks passed"
