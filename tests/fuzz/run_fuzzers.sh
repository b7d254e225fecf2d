#!/usr/bin/env bash
# Builds the fuzz targets of tests/fuzz with clang-14 -fsanitize=fuzzer,
# address,undefined (.bazelrc's --config=fuzz, in its own output base) and
# fuzzes each for SECONDS, starting from its corpus/<target>/ seeds.
#
#   tests/fuzz/run_fuzzers.sh SECONDS [TARGET...]   (default: every target)
#
# New corpus entries, crash/timeout/leak inputs and each target's log go to
# $PREFOPT_FUZZ_OUT/<target>/ (default /tmp/prefopt_fuzz); the repository's
# corpus folders are only read. A finding is fixed in the parser and its input
# copied to corpus/<target>/ (docs/fuzzing.md). Prints one line per target:
# seconds, runs, exec/s and findings. Exit status 1 when anything was found.
set -uo pipefail
cd "$(dirname "$0")/../.."
repo=$PWD
if [[ $# -lt 1 || ! $1 =~ ^[0-9]+$ ]]; then
  echo "usage: $0 SECONDS [TARGET...]" >&2
  exit 2
fi
seconds=$1
shift
targets=("$@")
if [[ ${#targets[@]} -eq 0 ]]; then
  targets=(safetensors_fuzzer hf_config_fuzzer tokenizer_fuzzer jsonl_fuzzer
           config_fuzzer checkpoint_fuzzer token_cache_fuzzer
           reference_cache_fuzzer)
fi
out=${PREFOPT_FUZZ_OUT:-/tmp/prefopt_fuzz}
bazel_fuzz=(bazel "--output_base=${PREFOPT_FUZZ_OUTPUT_BASE:-$HOME/.cache/prefopt-bazel-fuzz}")
labels=("${targets[@]/#/\/\/tests\/fuzz:}")
"${bazel_fuzz[@]}" build --config=fuzz "${labels[@]}" || exit 1
bin=$("${bazel_fuzz[@]}" info --config=fuzz bazel-bin 2>/dev/null)/tests/fuzz

status=0
summary=()
for target in "${targets[@]}"; do
  dir=$out/$target
  mkdir -p "$dir/corpus"
  echo "== $target: fuzzing for $seconds s (output in $dir)"
  # In the runfiles folder, where a target finds the fixtures it reads.
  (cd "$bin/$target.runfiles/prefopt" &&
    "$bin/$target" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
      -print_final_stats=1 -artifact_prefix="$dir/" \
      "$dir/corpus" "$repo/tests/fuzz/corpus/$target") >"$dir/log" 2>&1
  rc=$?
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$dir/log")
  speed=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$dir/log")
  found=$(find "$dir" -maxdepth 1 -type f \
    \( -name 'crash-*' -o -name 'timeout-*' -o -name 'leak-*' -o -name 'oom-*' \
       -o -name 'slow-unit-*' \) | wc -l)
  if [[ $rc -ne 0 || $found -ne 0 ]]; then
    status=1
    tail -n 40 "$dir/log"
  fi
  summary+=("$target: ${seconds} s, ${runs:-?} runs, ${speed:-?} exec/s, exit $rc, $found finding(s)")
done
printf '%s\n' "${summary[@]}"
exit "$status"
