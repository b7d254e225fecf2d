#!/usr/bin/env bash
# The README's demo (examples/arithmetic/run_demo.sh) end to end, shortened to
# SFT 8 epochs and DPO 1 epoch: every stage runs, the before/after table has
# its three rows, and for both models the greedy-answer accuracy measured by
# generating (prefopt generate) equals the evaluator's greedy/exact_match,
# which decides the same thing by teacher forcing.
set -uo pipefail

prefopt="$PWD/$1"
out_dir="${TEST_TMPDIR:-$(mktemp -d)}/demo"

if ! out=$(PREFOPT="$prefopt" SFT_EPOCHS=8 DPO_EPOCHS=1 \
  examples/arithmetic/run_demo.sh "$out_dir" 2>&1); then
  echo "FAIL: run_demo.sh: $out"
  exit 1
fi
failures=0
for row in "reward accuracy" "ranking accuracy" "greedy-answer accuracy"; do
  if ! grep -Eq "^$row .* [0-9.]+% +[0-9.]+%$" <<<"$out"; then
    echo "FAIL: no \"$row\" row with two percentages in: $out"
    failures=$((failures + 1))
  fi
done
for stage in sft dpo; do
  generated=$(grep -c '"matches_reference":true' \
    "$out_dir/eval_$stage/generations.jsonl")
  evaluated=$(awk -F': *' '/"greedy\/exact_match"/ {
    v = $2; sub(/,$/, "", v); printf "%d", v * 200 + 0.5 }' \
    "$out_dir/eval_$stage/eval.json")
  if [[ "$generated" != "$evaluated" ]]; then
    echo "FAIL $stage: $generated of 200 generated answers are right," \
      "greedy/exact_match says $evaluated"
    failures=$((failures + 1))
  else
    echo "ok   $stage: $generated of 200 answers right, by generation and by eval"
  fi
done
if [[ $failures -ne 0 ]]; then exit 1; fi
echo "ok: demo ran; table:"
tail -8 <<<"$out"
