#!/usr/bin/env bash
# Data-parallel training with real processes: `mpirun -np 2` with 2 examples per
# rank per step must retrace one rank with the doubled batch (4 examples per
# step, in 2 micro-batches), step for step, within fp32 summation-order noise;
# and 2 ranks with ZeRO-1 (sharded AdamW state) must retrace 2 unsharded ranks.
# Run for DPO, for SparsePO with two learned mask networks, whose gradients
# are summed across ranks with the policy's (unsummed, each rank's masks would
# drift apart and the losses with them), for TR-DPO, whose every rank
# mixes its own copy of the reference with the gathered policy (a rank that
# mixed with its ZeRO-1 shard only, or skipped the sync, would score against
# another reference), and for KTO, whose KL estimate sums the ranks'
# pre-passes (docs/objectives.md §9), and for LoRA (DPO and SparsePO), whose
# trainable buffer is the adapters alone.
set -uo pipefail

prefopt="$PWD/$1"
source "$PWD/comm/mpi_env.sh"
fixtures="$PWD/tests/fixtures/gpt2"
tmp="${TEST_TMPDIR:-$(mktemp -d)}"

# compare NAME A B LABEL: per-step metrics of two runs within fp32 noise.
compare() {
  python3 - "$@" <<'PY' || exit 1
import json, sys
name, label = sys.argv[1], sys.argv[4]
one = [json.loads(l) for l in open(sys.argv[2])]
two = [json.loads(l) for l in open(sys.argv[3])]
assert len(one) == len(two) == 6, (len(one), len(two))
keys = ["loss", "grad_norm", "rewards/margins", "logps/chosen"]
if name.startswith("sparsepo"):
    keys += ["mask/mean", "mask/kl_mean"]
if name == "kto":
    keys += ["kl", "logps/rejected"]
worst = 0.0
for a, b in zip(one, two):
    for key in keys:
        # KTO reports no chosen (rejected) metrics for a batch without
        # desirable (undesirable) examples; both runs must agree on that.
        assert (key in a) == (key in b), f"{name} step {a['step']}: {key}"
        if key not in a:
            continue
        x, y = a[key], b[key]
        err = abs(x - y) / max(abs(x), 1e-6)
        worst = max(worst, err)
        assert err < 1e-4, f"{name} ({label}) step {a['step']} {key}: {x} vs {y}"
print(f"ok: {name}, 6 steps, {label} (worst relative difference {worst:.2e})")
PY
}

# run_case NAME OBJECTIVE [MODEL_FIELDS DATA SHUFFLE POLICY REFERENCE]: 1 rank,
# 2 ranks and 2 ranks with ZeRO-1.
run_case() {
  local name="$1" objective="$2" model_fields="${3:-}"
  local data="${4:-pairs.jsonl}" shuffle="${5:-true}"
  local policy="${6:-policy}" reference="${7:-reference}"
  # REFERENCE "-": none (LoRA's reference is the model with its adapters off).
  local reference_field=""
  [[ $reference != "-" ]] && reference_field="reference_hf_path: \"$fixtures/$reference\""
  cat >"$tmp/$name.textproto" <<CONF
model { hf_path: "$fixtures/$policy" $reference_field $model_fields }
data { train_files: "$fixtures/$data" max_length: 64 shuffle: $shuffle }
objective { $objective }
optimizer { lr: 1e-3 weight_decay: 0.01 max_grad_norm: 1.0 }
batch { micro_batch_size: 2 global_batch_size: 4 }
max_steps: 6
seed: 5
CONF

  "$prefopt" train --config="$tmp/$name.textproto" --run_dir="$tmp/$name-one" \
    >"$tmp/$name-one.log" 2>&1 ||
    { echo "FAIL: $name single-rank run"; cat "$tmp/$name-one.log"; exit 1; }
  run_mpi 2 120 "$prefopt" train --config="$tmp/$name.textproto" \
    --run_dir="$tmp/$name-two" --set=batch.micro_batch_size=1 \
    >"$tmp/$name-two.log" 2>&1 ||
    { echo "FAIL: $name 2-rank run"; cat "$tmp/$name-two.log"; exit 1; }
  run_mpi 2 120 "$prefopt" train --config="$tmp/$name.textproto" \
    --run_dir="$tmp/$name-zero1" --set=batch.micro_batch_size=1 \
    --set=zero_stage=1 >"$tmp/$name-zero1.log" 2>&1 ||
    { echo "FAIL: $name 2-rank ZeRO-1 run"; cat "$tmp/$name-zero1.log"; exit 1; }

  compare "$name" "$tmp/$name-one/metrics.jsonl" "$tmp/$name-two/metrics.jsonl" \
    "1 rank x 4 pairs == 2 ranks x 2 pairs"
  compare "$name" "$tmp/$name-two/metrics.jsonl" \
    "$tmp/$name-zero1/metrics.jsonl" "2 ranks ZeRO-1 == 2 ranks unsharded"
}

run_case dpo "dpo { beta: 0.1 }"

# Activation recomputation on 2 ranks (each block's gradient all-reduce starts
# when its recomputed backward ends) retraces the stored path bit for bit.
run_mpi 2 120 "$prefopt" train --config="$tmp/dpo.textproto" \
  --run_dir="$tmp/dpo-two-recomputed" --set=batch.micro_batch_size=1 \
  --set=activation_checkpointing=true >"$tmp/dpo-two-recomputed.log" 2>&1 ||
  { echo "FAIL: dpo 2-rank recomputed run"; cat "$tmp/dpo-two-recomputed.log"; exit 1; }
python3 - "$tmp/dpo-two/metrics.jsonl" "$tmp/dpo-two-recomputed/metrics.jsonl" <<'PY' || exit 1
import json, sys
one = [json.loads(l) for l in open(sys.argv[1])]
two = [json.loads(l) for l in open(sys.argv[2])]
assert len(one) == len(two) == 6, (len(one), len(two))
for a, b in zip(one, two):
    for key in a:
        if "second" in key or "time" in key:
            continue
        assert a[key] == b[key], f"step {a['step']} {key}: {a[key]} vs {b[key]}"
print("ok: dpo, 2 ranks, recomputed == stored, bit for bit, 6 steps")
PY
run_case sparsepo \
  "sparsepo { independent_masks: true l1_reward: 0.01 mask_init_std: 0.3 }"
run_case tr_dpo "dpo { beta: 0.1 sync_ref_model: true ref_model_sync_steps: 2 }" \
  "live_reference: true"
# LoRA (docs/lora.md): only the adapters are all-reduced, sharded and stepped;
# dropout 0, whose masks would depend on how the batch is split.
run_case lora "dpo { beta: 0.1 }" \
  "lora { r: 4 alpha: 8 target_modules: 'all-linear' }" pairs.jsonl true \
  policy -
# SparsePO with LoRA: the adapters and both mask networks are summed across
# ranks; the reference is each rank's policy in reference mode.
run_case sparsepo_lora \
  "sparsepo { independent_masks: true l1_reward: 0.01 mask_init_std: 0.3 }" \
  "lora { r: 4 alpha: 8 target_modules: 'all-linear' }" pairs.jsonl true \
  policy -
# The models swapped, so that the KL estimate is above 0 (not clamped).
run_case kto "kto { beta: 0.5 desirable_weight: 1.33 }" "" unpaired.jsonl false \
  reference policy

# Ranks started with different configs refuse to train, naming what differs;
# a global batch that does not split evenly over the ranks is refused too.
run_mpi 2 60 bash -c 'extra=""; [[ $OMPI_COMM_WORLD_RANK == 1 ]] && extra=--set=optimizer.lr=2e-3
  exec "$0" train --config="$1" --run_dir="$2" $extra' \
  "$prefopt" "$tmp/dpo.textproto" "$tmp/mismatch" >"$tmp/mismatch.log" 2>&1
if [[ $? -eq 0 ]] || ! grep -q "the resolved config differs across ranks" "$tmp/mismatch.log"; then
  echo "FAIL: ranks with different configs were not refused"; cat "$tmp/mismatch.log"; exit 1
fi
run_mpi 2 60 "$prefopt" train --config="$tmp/dpo.textproto" --run_dir="$tmp/uneven" \
  --set=batch.micro_batch_size=1 --set=batch.global_batch_size=3 >"$tmp/uneven.log" 2>&1
if [[ $? -eq 0 ]] || ! grep -q "must be a multiple of batch.micro_batch_size \* world size" "$tmp/uneven.log"; then
  echo "FAIL: an uneven global batch was not refused"; cat "$tmp/uneven.log"; exit 1
fi
echo "ok: mismatched configs and an uneven global batch are refused on every rank"
