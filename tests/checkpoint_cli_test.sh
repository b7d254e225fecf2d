#!/usr/bin/env bash
# Checkpoints through the prefopt command, one process:
#  - a run resumed from a checkpoint logs exactly the losses (every metric but
#    the timing, as printed with %.9g) of one that never stopped, and ends
#    with the same weights and optimizer state, byte for byte;
#  - a corrupted byte in model.safetensors is detected, and --resume=latest
#    says so and falls back to the previous checkpoint;
#  - kill -9 while a checkpoint is being written (a test hook pauses the
#    writer there) leaves the earlier checkpoints intact, and --resume=latest
#    reports the unfinished one and resumes from the one before;
#  - kill -9 at random moments of a run that saves every step (mostly inside
#    a save), then SIGUSR1 and SIGTERM, each of which makes it save a
#    checkpoint and exit 0: every restart resumes, and the run still ends bit
#    for bit as an uninterrupted one;
#  - `prefopt export` writes a Hugging Face folder from a trained checkpoint,
#    and refuses missing or corrupt checkpoints, a non-empty output folder and
#    bad flags with messages that name them.
set -uo pipefail

prefopt="$PWD/$1"
pairs="$PWD/tests/fixtures/gpt2/pairs.jsonl"
tmp="${TEST_TMPDIR:-$(mktemp -d)}"
# One compute thread: OpenMP's spinning threads slow small steps tenfold on a
# busy machine, and runs compared bit for bit must use the same count anyway.
export OMP_NUM_THREADS=1
failures=0

source "$(dirname "$0")/cli_lib.sh"

# write_config FILE N_EMBD MAX_STEPS: a from-scratch GPT-2 on the 6 fixture
# pairs in global batches of 2 (3 steps per epoch, reshuffled each epoch),
# with a linear schedule whose every step depends on the step count.
write_config() {
  cat >"$1" <<CONF
model { architecture: GPT2 vocab_size: 101 n_positions: 32 n_embd: $2 n_layer: 2 n_head: 4 }
data { train_files: "$pairs" max_length: 32 shuffle: true }
objective { dpo { beta: 0.1 } }
optimizer { lr: 1e-3 weight_decay: 0.01 max_grad_norm: 1.0 }
schedule { kind: LINEAR warmup_steps: 2 }
batch { micro_batch_size: 1 global_batch_size: 2 }
max_steps: $3
seed: 5
CONF
}

# The metrics lines without tokens_per_second (the only timing-dependent
# value), as printed.
losses() { sed -E 's/, "tokens_per_second": [^,}]*//' "$1/metrics.jsonl"; }

# same_metrics NAME RUN_A RUN_B: the two runs' metrics.jsonl are identical
# apart from the timing.
same_metrics() {
  if [[ ! -s "$2/metrics.jsonl" || ! -s "$3/metrics.jsonl" ]]; then
    fail "$1: metrics.jsonl missing"
  elif diff <(losses "$2") <(losses "$3") >"$tmp/diff.txt"; then
    ok "$1: $(wc -l <"$3/metrics.jsonl") metrics lines equal the uninterrupted run's"
  else
    fail "$1: metrics differ from the uninterrupted run's:"
    head -20 "$tmp/diff.txt"
  fi
}

# train LOG ARGS...: runs prefopt train, output to LOG; returns its status.
train() {
  local log=$1
  shift
  "$prefopt" train "$@" >"$log" 2>&1
}

# expect_in NAME FILE TEXT: FILE contains TEXT.
expect_in() {
  if grep -qF -- "$3" "$2"; then
    ok "$1"
  else
    fail "$1: \"$3\" not in $2:"
    cat "$2"
  fi
}

write_config "$tmp/small.textproto" 32 8

# --- An uninterrupted run, and one resumed from its step-4 checkpoint. ---
train "$tmp/straight.log" --config="$tmp/small.textproto" --run_dir="$tmp/straight" \
  --set=save_every_steps=4 || { fail "uninterrupted run"; cat "$tmp/straight.log"; }
for step in 4 8; do
  [[ -e "$tmp/straight/checkpoints/step_$step/COMPLETE" ]] ||
    fail "no complete checkpoint step_$step"
done
cp -r "$tmp/straight" "$tmp/resumed"
rm -r "$tmp/resumed/checkpoints/step_8"
if train "$tmp/resumed.log" --config="$tmp/small.textproto" --run_dir="$tmp/resumed" \
  --resume=latest; then
  expect_in "resume reports where it starts" "$tmp/resumed.log" \
    "resumed from $tmp/resumed/checkpoints/step_4: step 4 of 8"
  same_metrics "resume at step 4" "$tmp/straight" "$tmp/resumed"
  for file in model.safetensors optimizer.safetensors; do
    cmp -s "$tmp/straight/checkpoints/step_8/$file" "$tmp/resumed/checkpoints/step_8/$file" &&
      ok "resumed step_8 $file equals the uninterrupted run's byte for byte" ||
      fail "resumed step_8 $file differs from the uninterrupted run's"
  done
else
  fail "resume"; cat "$tmp/resumed.log"
fi

# --- A corrupted byte: detected, and latest falls back to step 4. ---
model="$tmp/resumed/checkpoints/step_8/model.safetensors"
size=$(stat -c %s "$model")
printf '\x55' | dd of="$model" bs=1 seek=$((size - 100)) conv=notrunc status=none
if train "$tmp/corrupt.log" --config="$tmp/small.textproto" --run_dir="$tmp/resumed" \
  --resume=latest; then
  expect_in "corrupt model.safetensors is reported" "$tmp/corrupt.log" \
    "resume: skipping checkpoint $tmp/resumed/checkpoints/step_8: tensor"
  expect_in "the CRC32C mismatch is named" "$tmp/corrupt.log" "in model.safetensors: CRC32C mismatch"
  expect_in "falls back to step 4" "$tmp/corrupt.log" \
    "resume: falling back to $tmp/resumed/checkpoints/step_4"
  same_metrics "resume after the fallback" "$tmp/straight" "$tmp/resumed"
else
  fail "resume past a corrupt checkpoint"; cat "$tmp/corrupt.log"
fi

# --- kill -9 while checkpoint step 6 is being written. ---
PREFOPT_TEST_PAUSE_BEFORE_FINALIZE=6 "$prefopt" train --config="$tmp/small.textproto" \
  --run_dir="$tmp/killed" --set=save_every_steps=2 >"$tmp/killed.log" 2>&1 &
pid=$!
for _ in $(seq 600); do
  grep -q "test hook: checkpoint step 6" "$tmp/killed.log" && break
  sleep 0.1
done
kill -9 "$pid"
wait "$pid" 2>/dev/null
ckpts="$tmp/killed/checkpoints"
if [[ -e "$ckpts/step_2/COMPLETE" && -e "$ckpts/step_4/COMPLETE" && ! -e "$ckpts/step_6" ]] &&
  compgen -G "$ckpts/.tmp_step_6_*" >/dev/null; then
  ok "kill -9 mid-save: step_2 and step_4 complete, step 6 only a temporary folder"
else
  fail "kill -9 mid-save left: $(ls -A "$ckpts")"; cat "$tmp/killed.log"
fi
if train "$tmp/after_kill.log" --config="$tmp/small.textproto" --run_dir="$tmp/killed" \
  --set=save_every_steps=2 --resume=latest; then
  expect_in "the unfinished save is reported" "$tmp/after_kill.log" \
    "resume: skipping checkpoint $ckpts/step_6: the save did not finish"
  expect_in "resume falls back to step 4" "$tmp/after_kill.log" \
    "resume: falling back to $ckpts/step_4"
  same_metrics "resume after kill -9" "$tmp/straight" "$tmp/killed"
  compgen -G "$ckpts/.tmp_step_*" >/dev/null &&
    fail "the killed save's temporary folder was not removed" ||
    ok "the next save removed the killed save's temporary folder"
else
  fail "resume after kill -9"; cat "$tmp/after_kill.log"
fi

# --- kill -9 at random moments, and stop signals, in a run that saves every
# step. 1.6M parameters: each save (model and moments, 19 MB, flushed to
# disk) takes several times longer than a step, so most kills and signals
# land inside a save, and the run lasts long enough to be interrupted.
write_config "$tmp/large.textproto" 256 100
train "$tmp/large_straight.log" --config="$tmp/large.textproto" --run_dir="$tmp/large_straight" ||
  { fail "uninterrupted large run"; cat "$tmp/large_straight.log"; }
saving=(--config="$tmp/large.textproto" --run_dir="$tmp/large" --set=save_every_steps=1
  --set=keep_last_n=2 --resume=latest)
mid_save=0
for attempt in 1 2 3; do
  "$prefopt" train "${saving[@]}" >"$tmp/large_$attempt.log" 2>&1 &
  pid=$!
  sleep "$(awk -v seed="$RANDOM" 'BEGIN { srand(seed); printf "%.2f", 0.3 + 0.9 * rand() }')"
  kill -9 "$pid" 2>/dev/null
  wait "$pid" 2>/dev/null
  if compgen -G "$tmp/large/checkpoints/.tmp_step_*" >/dev/null; then
    mid_save=$((mid_save + 1))
  else
    for dir in "$tmp"/large/checkpoints/step_*; do
      [[ -e "$dir/COMPLETE" ]] || mid_save=$((mid_save + 1))
    done
  fi
done
echo "     ($mid_save of 3 kills landed inside a save)"

# stop_with SIGNAL: resumes the run, sends SIGNAL once it has logged 2 more
# steps, and checks the exit status, the message and the checkpoint.
stop_with() {
  local signal=$1 log="$tmp/large_$1.log" before after rc step
  before=$(cat "$tmp/large/metrics.jsonl" 2>/dev/null | wc -l)
  "$prefopt" train "${saving[@]}" >"$log" 2>&1 &
  local pid=$!
  for _ in $(seq 600); do
    after=$(cat "$tmp/large/metrics.jsonl" 2>/dev/null | wc -l)
    [[ $after -ge $((before + 2)) ]] && break
    sleep 0.02
  done
  kill -"$signal" "$pid"
  wait "$pid"
  rc=$?
  step=$(wc -l <"$tmp/large/metrics.jsonl")
  if [[ $rc -eq 0 && $step -lt 100 ]] &&
    grep -qF "stopped by SIG$signal after step $step of 100; continue with --resume=latest" "$log" &&
    [[ -e "$tmp/large/checkpoints/step_$step/COMPLETE" ]]; then
    ok "SIG$signal: checkpoint step_$step, exit 0"
  else
    fail "SIG$signal: exit $rc, $step metrics lines, checkpoints: $(ls "$tmp/large/checkpoints" 2>&1)"
    tail -5 "$log"
  fi
}
stop_with USR1
stop_with TERM
if train "$tmp/large_final.log" --config="$tmp/large.textproto" --run_dir="$tmp/large" \
  --set=keep_last_n=2 --resume=latest; then
  same_metrics "3 random kill -9, SIGUSR1, SIGTERM and restarts" "$tmp/large_straight" "$tmp/large"
  [[ $(ls "$tmp/large/checkpoints" | wc -l) -eq 2 ]] &&
    ok "keep_last_n=2 leaves 2 checkpoints" ||
    fail "keep_last_n=2 left: $(ls -A "$tmp/large/checkpoints")"
else
  fail "restart after the interruptions"; cat "$tmp/large_final.log"
fi

# --- prefopt export ---
# expect_export NAME CODE TEXT ARGS...: exit status CODE, TEXT in the output.
expect_export() {
  local name=$1 code=$2 text=$3 out rc
  shift 3
  out=$("$prefopt" export "$@" 2>&1)
  rc=$?
  if [[ $rc -eq $code && "$out" == *"$text"* ]]; then
    ok "export: $name"
  else
    fail "export: $name: exit $rc (want $code), output: $out"
  fi
}
expect_export "a run dir exports its latest checkpoint" 0 \
  "exported $tmp/straight/checkpoints/step_8 (step 8) to $tmp/hf_fp32 as fp32" \
  --checkpoint="$tmp/straight" --out="$tmp/hf_fp32"
for file in config.json generation_config.json model.safetensors; do
  [[ -s "$tmp/hf_fp32/$file" ]] || fail "export: no $file"
done
expect_export "bf16 in shards" 0 "as bf16" --checkpoint="$tmp/straight/checkpoints/step_4" \
  --out="$tmp/hf_bf16" --dtype=bf16 --max_shard_size=20KB
[[ -e "$tmp/hf_bf16/model.safetensors.index.json" ]] || fail "export: bf16 export is not sharded"
expect_export "missing checkpoint" 1 "checkpoint $tmp/nowhere: no such folder" \
  --checkpoint="$tmp/nowhere" --out="$tmp/hf_x"
mkdir -p "$tmp/corrupt"
cp -r "$tmp/straight/checkpoints/step_4" "$tmp/corrupt/"
model="$tmp/corrupt/step_4/model.safetensors"
printf '\x55' | dd of="$model" bs=1 seek=$(($(stat -c %s "$model") - 100)) conv=notrunc status=none
expect_export "corrupt checkpoint" 1 "in model.safetensors: CRC32C mismatch" \
  --checkpoint="$tmp/corrupt/step_4" --out="$tmp/hf_x"
expect_export "non-empty output folder" 1 "the folder exists and is not empty" \
  --checkpoint="$tmp/straight" --out="$tmp/hf_fp32"
expect_export "bad dtype" 2 '--dtype: expected bf16, fp16 or fp32, got "int4"' \
  --checkpoint="$tmp/straight" --out="$tmp/hf_x" --dtype=int4
expect_export "bad shard size" 2 '--max_shard_size: expected a positive number' \
  --checkpoint="$tmp/straight" --out="$tmp/hf_x" --max_shard_size=lots
expect_export "--out required" 2 "--checkpoint=DIR and --out=HF_DIR are required" \
  --checkpoint="$tmp/straight"
lora="$PWD/tests/fixtures/lora"
base="$PWD/tests/fixtures/gpt2/policy"
expect_export "--merge_lora" 0 \
  "merged 8 LoRA modules of $lora/gpt2/adapter_start (scaling 2) into $base; wrote $tmp/merged as bf16" \
  --merge_lora --model="$base" --adapter="$lora/gpt2/adapter_start" --out="$tmp/merged" --dtype=bf16
for file in config.json generation_config.json model.safetensors; do
  [[ -s "$tmp/merged/$file" ]] || fail "export --merge_lora: no $file"
done
expect_export "--merge_lora with --checkpoint" 2 "not --checkpoint" \
  --merge_lora --checkpoint="$tmp/straight" --out="$tmp/hf_x"
expect_export "--merge_lora without --adapter" 2 "--merge_lora needs --model=HF_DIR, --adapter" \
  --merge_lora --model="$base" --out="$tmp/hf_x"
expect_export "--adapter without --merge_lora" 2 "--model and --adapter go with --merge_lora" \
  --checkpoint="$tmp/straight" --adapter="$lora/gpt2/adapter_start" --out="$tmp/hf_x"
expect_export "--merge_lora, adapter of another model" 1 'matches no linear layer of the model' \
  --merge_lora --model="$base" --adapter="$lora/qwen2/adapter_start" --out="$tmp/hf_x"
[[ -e "$tmp/hf_x" ]] && fail "export: a failed export left $tmp/hf_x"

if [[ $failures -ne 0 ]]; then
  echo "$failures check(s) failed"
  exit 1
fi
echo "all checks passed"
