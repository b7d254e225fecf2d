#!/usr/bin/env bash
# Checkpoints of data-parallel runs (mpirun):
#  - a checkpoint saved by 2 ranks resumes on 1 rank, and one saved by 1 rank
#    on 2, with the same global batch: the steps after the checkpoint match
#    the run that saved it within 1e-5 relative (the same global-batch
#    update; only the order of fp32 sums differs);
#  - SIGUSR1 sent to mpirun (as Slurm's --signal does through srun) reaches
#    both ranks, which agree on one step, save one checkpoint and exit 0; the
#    run then resumes on 2 ranks.
set -uo pipefail

prefopt="$PWD/$1"
source "$PWD/comm/mpi_env.sh"
pairs="$PWD/tests/fixtures/gpt2/pairs.jsonl"
tmp="${TEST_TMPDIR:-$(mktemp -d)}"
# One compute thread per rank: the two ranks share the machine's cores.
export OMP_NUM_THREADS=1
failures=0

source "$(dirname "$0")/cli_lib.sh"

# write_config FILE N_EMBD MAX_STEPS: global batches of 4 pairs (2 per rank on
# 2 ranks) in micro-batches of 1.
write_config() {
  cat >"$1" <<CONF
model { architecture: GPT2 vocab_size: 101 n_positions: 32 n_embd: $2 n_layer: 2 n_head: 4 }
data { train_files: "$pairs" max_length: 32 shuffle: true }
objective { dpo { beta: 0.1 } }
optimizer { lr: 1e-3 weight_decay: 0.01 max_grad_norm: 1.0 }
schedule { kind: LINEAR warmup_steps: 2 }
batch { micro_batch_size: 1 global_batch_size: 4 }
max_steps: $3
seed: 9
CONF
}

# compare NAME SAVED_RUN RESUMED_RUN: the resumed run's lines (the steps after
# the checkpoint) against the same steps of the run that saved it.
compare() {
  python3 - "$1" "$2/metrics.jsonl" "$3/metrics.jsonl" <<'PY'
import json, sys
name, saved_path, resumed_path = sys.argv[1:]
saved = {r["step"]: r for r in map(json.loads, open(saved_path))}
resumed = [json.loads(l) for l in open(resumed_path)]
assert [r["step"] for r in resumed] == [4, 5, 6], [r["step"] for r in resumed]
worst = 0.0
for r in resumed:
    for key in ("loss", "grad_norm", "rewards/margins", "logps/chosen", "lr"):
        a, b = saved[r["step"]][key], r[key]
        err = abs(a - b) / max(abs(a), 1e-6)
        worst = max(worst, err)
        if err > 1e-5:
            sys.exit(f"FAIL: {name}: step {r['step']} {key}: {a} saved, {b} resumed")
print(f"ok   {name}: steps 4-6 within {worst:.1e} relative of the saving run")
PY
}

write_config "$tmp/dp.textproto" 32 6

# 2 ranks save at step 3; 1 rank resumes into a new run dir.
run_mpi 2 120 "$prefopt" train --config="$tmp/dp.textproto" --run_dir="$tmp/two" \
  --set=save_every_steps=3 >"$tmp/two.log" 2>&1 ||
  { fail "2-rank run"; cat "$tmp/two.log"; }
if "$prefopt" train --config="$tmp/dp.textproto" --run_dir="$tmp/two_then_one" \
  --resume="$tmp/two/checkpoints/step_3" >"$tmp/two_then_one.log" 2>&1; then
  grep -qF "saved by 2 rank(s), now 1" "$tmp/two_then_one.log" ||
    fail "the rank change is not reported: $(cat "$tmp/two_then_one.log")"
  compare "saved by 2 ranks, resumed on 1" "$tmp/two" "$tmp/two_then_one" ||
    failures=$((failures + 1))
else
  fail "1-rank resume of a 2-rank checkpoint"; cat "$tmp/two_then_one.log"
fi

# 1 rank saves at step 3; 2 ranks resume.
"$prefopt" train --config="$tmp/dp.textproto" --run_dir="$tmp/one" \
  --set=save_every_steps=3 >"$tmp/one.log" 2>&1 ||
  { fail "1-rank run"; cat "$tmp/one.log"; }
if run_mpi 2 120 "$prefopt" train --config="$tmp/dp.textproto" --run_dir="$tmp/one_then_two" \
  --resume="$tmp/one/checkpoints/step_3" >"$tmp/one_then_two.log" 2>&1; then
  compare "saved by 1 rank, resumed on 2" "$tmp/one" "$tmp/one_then_two" ||
    failures=$((failures + 1))
else
  fail "2-rank resume of a 1-rank checkpoint"; cat "$tmp/one_then_two.log"
fi

# SIGUSR1 to mpirun. The larger model saves every step, long enough for the
# signal to arrive mid-run, and usually inside a save on one of the ranks.
write_config "$tmp/long.textproto" 256 100
timeout -k 5 120 "$MPIRUN" -np 2 --tag-output "$prefopt" train --config="$tmp/long.textproto" \
  --run_dir="$tmp/signal" --set=save_every_steps=1 --set=keep_last_n=1 >"$tmp/signal.log" 2>&1 &
pid=$!
for _ in $(seq 1200); do
  [[ $(cat "$tmp/signal/metrics.jsonl" 2>/dev/null | wc -l) -ge 2 ]] && break
  sleep 0.05
done
# The timeout wrapper does not forward SIGUSR1; mpirun is its child.
kill -USR1 "$(pgrep -P "$pid" -x mpirun)"
wait "$pid"
rc=$?
step=$(wc -l <"$tmp/signal/metrics.jsonl")
manifest="$tmp/signal/checkpoints/step_$step/manifest.textproto"
if [[ $rc -eq 0 && $step -lt 100 && -e "$tmp/signal/checkpoints/step_$step/COMPLETE" ]] &&
  grep -qF "stopped by SIGUSR1 after step $step of 100" "$tmp/signal.log" &&
  grep -q "^world_size: 2" "$manifest"; then
  echo "ok   SIGUSR1 to mpirun: both ranks saved step_$step and exited 0"
else
  fail "SIGUSR1 to mpirun: exit $rc, $step metrics lines, $(ls "$tmp/signal/checkpoints" 2>&1)"
  tail -20 "$tmp/signal.log"
fi
if run_mpi 2 120 "$prefopt" train --config="$tmp/long.textproto" --run_dir="$tmp/signal" \
  --resume=latest >"$tmp/signal_resume.log" 2>&1; then
  lines=$(wc -l <"$tmp/signal/metrics.jsonl")
  steps=$(python3 -c "import json,sys; print(' '.join(str(json.loads(l)['step']) for l in open(sys.argv[1])))" \
    "$tmp/signal/metrics.jsonl")
  [[ $lines -eq 100 && "$steps" == "$(seq -s ' ' 1 100)" ]] &&
    echo "ok   the 2-rank run resumed after the signal and logged steps 1-100 once each" ||
    fail "after resuming: $lines lines, steps $steps"
else
  fail "2-rank resume after the signal"; cat "$tmp/signal_resume.log"
fi

if [[ $failures -ne 0 ]]; then
  echo "$failures check(s) failed"
  exit 1
fi
echo "all checks passed"
