#!/bin/sh
# Every preference objective on the arithmetic example, side by side: each
# trains from the SFT model that run_demo.sh exports (ORPO, a one-stage
# method, from random initialization, as orpo.textproto says), and is scored
# as the demo scores DPO: `prefopt eval` with dpo.textproto (the SFT model as
# reference) for reward and ranking accuracy, and `prefopt generate` for the
# share of correct greedy answers on the 200 held-out sums. The DPO loss types
# without an example config of their own run dpo.textproto with their
# loss_type (and the option they need) set on the command line.
#
# Usage, after examples/arithmetic/run_demo.sh:
#   examples/arithmetic/run_family.sh [DEMO_DIR]   # default /tmp/prefopt-demo
# Runs JOBS trainings at once (default 2); ONLY=name,name runs a subset.
# PREFOPT names the binary (default: bazel-bin/launch/prefopt).
set -eu

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
demo=${1:-/tmp/prefopt-demo}
prefopt=${PREFOPT:-$repo/bazel-bin/launch/prefopt}
jobs=${JOBS:-2}
OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
export OMP_NUM_THREADS
sft="$demo/sft/model"
out="$demo/family"

if [ ! -x "$prefopt" ]; then
  echo "run_family.sh: $prefopt is not an executable; build it with" \
    "'bazel build //launch:prefopt' or set PREFOPT" >&2
  exit 2
fi
if [ ! -f "$sft/config.json" ]; then
  echo "run_family.sh: no SFT model at $sft; run" \
    "examples/arithmetic/run_demo.sh $demo first" >&2
  exit 2
fi
mkdir -p "$out"

# name|config|overrides (space-separated --set values, no spaces inside)
variants='dpo|dpo.textproto|
cdpo|cdpo.textproto|
ipo|ipo.textproto|
hinge|hinge.textproto|
robust|robust.textproto|
exo_pair|dpo.textproto|objective.dpo.loss_type=EXO_PAIR objective.dpo.label_smoothing=0.001
nca_pair|dpo.textproto|objective.dpo.loss_type=NCA_PAIR
bco_pair|dpo.textproto|objective.dpo.loss_type=BCO_PAIR
sppo_hard|sppo_hard.textproto|
aot|dpo.textproto|objective.dpo.loss_type=AOT
aot_unpaired|dpo.textproto|objective.dpo.loss_type=AOT_UNPAIRED
apo_zero|apo_zero.textproto|
apo_down|dpo.textproto|objective.dpo.loss_type=APO_DOWN
discopop|dpo.textproto|objective.dpo.loss_type=DISCOPOP
sigmoid_norm|dpo.textproto|objective.dpo.loss_type=SIGMOID_NORM
mpo|mpo.textproto|
forward_kl|dpo.textproto|objective.dpo.f_divergence_type=FORWARD_KL
js_divergence|dpo.textproto|objective.dpo.f_divergence_type=JS_DIVERGENCE
alpha_divergence|dpo.textproto|objective.dpo.f_divergence_type=ALPHA_DIVERGENCE
ld_dpo|dpo.textproto|objective.dpo.ld_alpha=0.5
wpo|dpo.textproto|objective.dpo.use_weighting=true
tr_dpo|tr_dpo.textproto|
kto|kto.textproto|
cpo|cpo.textproto|
simpo|simpo.textproto|
orpo|orpo.textproto|'

selected() {
  [ -z "${ONLY:-}" ] && return 0
  case ",$ONLY," in *",$1,"*) return 0 ;; esac
  return 1
}

# Trains one variant and scores it; the log goes to $out/NAME.log.
run_one() {
  name=$1 config=$2 overrides=$3
  dir="$out/$name"
  rm -rf "$dir" "$dir.eval"
  sets=""
  for o in $overrides; do sets="$sets --set=$o"; done
  start=$(date +%s)
  # shellcheck disable=SC2086  # $sets splits into its --set arguments
  if "$prefopt" train --config="$here/$config" --run_dir="$dir" \
    --set=export_hf_path="$dir/model" $sets >"$dir.log" 2>&1 &&
    "$prefopt" eval --config="$here/dpo.textproto" \
      --set=model.hf_path="$sft" --model="$dir/model" \
      --run_dir="$dir.eval" >>"$dir.log" 2>&1 &&
    "$prefopt" generate --model="$dir/model" --data="$here/eval.jsonl" \
      >"$dir.eval/generations.jsonl" 2>>"$dir.log"; then
    echo "$(($(date +%s) - start))" >"$dir.seconds"
  else
    echo "run_family.sh: $name failed; see $dir.log" >&2
    echo failed >"$dir.seconds"
  fi
}

# The pipeline's subshell starts the trainings, so it also waits for them.
echo "$variants" | {
  running=0
  while IFS='|' read -r name config overrides; do
    selected "$name" || continue
    run_one "$name" "$config" "$overrides" &
    running=$((running + 1))
    if [ "$running" -ge "$jobs" ]; then
      wait
      running=0
    fi
  done
  wait
}

metric() {
  [ -f "$1/eval.json" ] || { printf 'n/a'; return; }
  awk -v key="\"$2\"" -F': *' '{
    name = $1; sub(/^ +/, "", name)
    if (name == key) { v = $2; sub(/,$/, "", v); printf "%.1f%%", 100 * v }
  }' "$1/eval.json"
}
answers() {
  [ -s "$1/generations.jsonl" ] || { printf 'n/a'; return; }
  awk '{ n++ } /"matches_reference":true/ { ok++ }
       END { printf "%.1f%%", 100 * ok / n }' "$1/generations.jsonl"
}

echo "Held-out sums (examples/arithmetic/eval.jsonl): reward accuracy"
echo "(rewards/accuracies against the SFT model), ranking accuracy"
echo "(ranking/accuracy), greedy-answer accuracy, training seconds"
printf '%-18s %-20s %9s %9s %9s %8s\n' objective config "reward" "ranking" \
  "greedy" seconds
printf '%-18s %-20s %9s %9s %9s %8s\n' "SFT model" "sft.textproto" \
  "$(metric "$demo/eval_sft" rewards/accuracies)" \
  "$(metric "$demo/eval_sft" ranking/accuracy)" "$(answers "$demo/eval_sft")" -
echo "$variants" | while IFS='|' read -r name config overrides; do
  selected "$name" || continue
  dir="$out/$name"
  printf '%-18s %-20s %9s %9s %9s %8s\n' "$name" "$config" \
    "$(metric "$dir.eval" rewards/accuracies)" \
    "$(metric "$dir.eval" ranking/accuracy)" \
    "$(answers "$dir.eval")" "$(cat "$dir.seconds" 2>/dev/null || echo -)"
done
