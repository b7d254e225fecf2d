#!/bin/sh
# The bundled demo: SFT, then DPO, on two-digit additions, and a before/after
# table on 200 held-out sums.
#
#   1. SFT (sft.textproto) trains a small GPT-2 from random initialization on
#      demonstrations and exports it as a Hugging Face folder.
#   2. DPO (dpo.textproto) starts from that model, which is also its
#      reference, and learns to prefer correct sums over plausible wrong ones.
#   3. `prefopt eval` scores both models on eval.jsonl (reward and ranking
#      accuracy) and `prefopt generate` writes each model's greedy answer to
#      every held-out prompt (answer accuracy).
#
# Usage, from anywhere (needs only a POSIX shell and awk):
#   examples/arithmetic/run_demo.sh [OUT_DIR]      # default /tmp/prefopt-demo
# PREFOPT names the binary (default: bazel-bin/launch/prefopt of the
# repository); SFT_EPOCHS and DPO_EPOCHS shorten the runs (the smoke test).
set -eu

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
out=${1:-/tmp/prefopt-demo}
prefopt=${PREFOPT:-$repo/bazel-bin/launch/prefopt}
# The model is tiny: one thread is as fast as two, and steadier when other
# work shares the cores.
OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
export OMP_NUM_THREADS

if [ ! -x "$prefopt" ]; then
  echo "run_demo.sh: $prefopt is not an executable; build it with" \
    "'bazel build //launch:prefopt' or set PREFOPT" >&2
  exit 2
fi
sft_epochs=${SFT_EPOCHS:+--set=num_epochs=$SFT_EPOCHS}
dpo_epochs=${DPO_EPOCHS:+--set=num_epochs=$DPO_EPOCHS}

# A rerun starts afresh (exports never overwrite a folder, and old event
# files would mix into TensorBoard), but only in a folder this script made.
if [ -e "$out" ] && [ ! -e "$out/.prefopt-demo" ] &&
  [ -n "$(ls -A "$out")" ]; then
  echo "run_demo.sh: $out exists and was not made by run_demo.sh;" \
    "name another folder" >&2
  exit 2
fi
rm -rf "$out/sft" "$out/dpo" "$out/eval_sft" "$out/eval_dpo" \
  "$out/eval_sft.log" "$out/eval_dpo.log"
mkdir -p "$out"
touch "$out/.prefopt-demo"
start=$(date +%s)

echo "== 1/3 SFT from random initialization =="
# shellcheck disable=SC2086  # an empty $sft_epochs must vanish
"$prefopt" train --config="$here/sft.textproto" --run_dir="$out/sft" \
  --set=export_hf_path="$out/sft/model" $sft_epochs

echo "== 2/3 DPO from the SFT model (also the reference) =="
# shellcheck disable=SC2086
"$prefopt" train --config="$here/dpo.textproto" --run_dir="$out/dpo" \
  --set=model.hf_path="$out/sft/model" \
  --set=export_hf_path="$out/dpo/model" $dpo_epochs

echo "== 3/3 both models on the held-out sums =="
for stage in sft dpo; do
  # The reference is the SFT model for both, as in training.
  "$prefopt" eval --config="$here/dpo.textproto" \
    --set=model.hf_path="$out/sft/model" --model="$out/$stage/model" \
    --run_dir="$out/eval_$stage" >"$out/eval_$stage.log"
  "$prefopt" generate --model="$out/$stage/model" --data="$here/eval.jsonl" \
    >"$out/eval_$stage/generations.jsonl" 2>>"$out/eval_$stage.log"
done

# A metric of eval.json (one "name": value member per line), as a percentage.
metric() {
  awk -v key="\"$2\"" -F': *' '{
    name = $1; sub(/^ +/, "", name)
    if (name == key) { v = $2; sub(/,$/, "", v); printf "%.1f%%", 100 * v }
  }' "$out/eval_$1/eval.json"
}
# The share of generated answers equal to the correct one.
answers() {
  awk '{ n++ } /"matches_reference":true/ { ok++ }
       END { printf "%.1f%%", 100 * ok / n }' "$out/eval_$1/generations.jsonl"
}

echo
echo "Held-out sums (examples/arithmetic/eval.jsonl, 200 sums no training file asks):"
printf '%-44s %10s %10s\n' "" "SFT model" "DPO model"
printf '%-44s %10s %10s\n' "reward accuracy (rewards/accuracies) *" \
  "$(metric sft rewards/accuracies)" "$(metric dpo rewards/accuracies)"
printf '%-44s %10s %10s\n' "ranking accuracy (ranking/accuracy)" \
  "$(metric sft ranking/accuracy)" "$(metric dpo ranking/accuracy)"
printf '%-44s %10s %10s\n' "greedy-answer accuracy (prefopt generate)" \
  "$(answers sft)" "$(answers dpo)"
echo "* rewards are log-ratios to the reference, the SFT model itself: 0 for it"
echo
echo "done in $(($(date +%s) - start)) s. Charts: $out/sft/report.html," \
  "$out/dpo/report.html; models: $out/sft/model, $out/dpo/model"
