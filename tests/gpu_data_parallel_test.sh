#!/usr/bin/env bash
# Data-parallel training of GPU ranks, on the CUDA CPU simulation: `mpirun -np
# 2` of the simulated prefopt (device: GPU on every rank; the ranks exchange
# device buffers through the staged communicator, comm/staged_communicator.h,
# which stands in for NCCL) must retrace one simulated GPU rank with the
# doubled batch, step for step (every metric within 1e-5), and end with the
# same weights (within the bounds of weights() below); with ZeRO-1 too
# (reduce-scatter of the gradients, all-gather of the updated shards, on
# device buffers), and a ZeRO-1 checkpoint resumes. For DPO, SFT, KTO and
# SparsePO. Then the rank checks with device: GPU: ranks with different
# configs or different data refuse to train, naming what differs; two ranks
# on one GPU are refused; a killed rank ends the job instead of hanging it.
set -uo pipefail

prefopt="$PWD/$1"
source "$PWD/comm/mpi_env.sh"
fixtures="$PWD/tests/fixtures"
tmp="${TEST_TMPDIR:-$(mktemp -d)}"
# Two simulated ranks share this machine's cores; one simulated GPU each.
export PREFOPT_CUDASIM_WORKERS=1 OMP_NUM_THREADS=1 PREFOPT_CUDASIM_DEVICES=2

# compare A B LABEL: per-step metrics of two runs within fp32 summation-order
# noise: 1e-5 relative, plus 1e-6 absolute for metrics near 0 that are
# differences of log-probabilities (KTO's rewards/rejected at 0.106 moves by
# 1.2e-6).
compare() {
  python3 - "$@" <<'PY' || exit 1
import json, sys
one = [json.loads(l) for l in open(sys.argv[1])]
two = [json.loads(l) for l in open(sys.argv[2])]
assert len(one) == len(two) == 6, (len(one), len(two))
worst = 0.0
for a, b in zip(one, two):
    assert a.keys() == b.keys(), (sorted(a), sorted(b))
    for key in a:
        if "second" in key or "time" in key or key == "step":
            continue
        x, y = a[key], b[key]
        err = abs(x - y) / max(abs(x), 1e-3)
        worst = max(worst, err)
        assert abs(x - y) <= 1e-6 + 1e-5 * abs(x), \
            f"{sys.argv[3]}: step {a['step']} {key}: {x} vs {y}"
print(f"ok: {sys.argv[3]}, 6 steps, every metric (worst relative difference {worst:.2e})")
PY
}

# weights A B LABEL: the exported models' tensors. AdamW divides by the root
# of the second moment, so an element whose gradient is about 0 turns the
# fp32 rounding of a different summation order into steps of up to lr (1e-3)
# in either direction; a few dozen of GPT-2's 30752 do. So: 99.5% of the
# elements within 1e-5, all within the 6 steps' largest possible move, 6e-3.
weights() {
  python3 - "$@" <<'PY' || exit 1
import json, struct, sys
from array import array
def load(d):
    raw = open(d + "/model.safetensors", "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    out = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        assert t["dtype"] == "F32", t["dtype"]
        b, e = t["data_offsets"]
        a = array("f")
        a.frombytes(raw[8 + n + b:8 + n + e])
        out[name] = a
    return out
one, two = load(sys.argv[1]), load(sys.argv[2])
assert one.keys() == two.keys()
diffs = sorted(abs(x - y) for k in one for x, y in zip(one[k], two[k]))
near = diffs[int(len(diffs) * 0.995)]
assert near < 1e-5, f"{sys.argv[3]}: 0.5% of the final weights differ by more than {near}"
assert diffs[-1] < 6e-3, f"{sys.argv[3]}: a final weight differs by {diffs[-1]}"
far = sum(1 for d in diffs if d >= 1e-5)
print(f"ok: {sys.argv[3]}, final weights ({len(diffs) - far} of {len(diffs)} within 1e-5, largest difference {diffs[-1]:.2e})")
PY
}

if ! "$prefopt" --help >/dev/null; then echo "FAIL: $prefopt"; exit 1; fi

# run_case NAME OBJECTIVE DATA [SHUFFLE POLICY REFERENCE]: 1 rank, 2 ranks,
# 2 ranks with ZeRO-1, and a resumed ZeRO-1 checkpoint.
run_case() {
  local name="$1" objective="$2" data="$3" shuffle="${4:-true}"
  local policy="${5:-policy}" reference="${6:-reference}"
  cat >"$tmp/$name.textproto" <<CONF
model { hf_path: "$fixtures/gpt2/$policy" reference_hf_path: "$fixtures/gpt2/$reference" }
data { train_files: "$data" max_length: 64 shuffle: $shuffle }
objective { $objective }
optimizer { lr: 1e-3 weight_decay: 0.01 max_grad_norm: 1.0 }
batch { micro_batch_size: 2 global_batch_size: 4 }
device: GPU
precision: FP32
max_steps: 6
seed: 5
CONF
  "$prefopt" train --config="$tmp/$name.textproto" --run_dir="$tmp/$name-one" \
    --set=export_hf_path="$tmp/$name-one-model" >"$tmp/$name-one.log" 2>&1 ||
    { echo "FAIL: $name single-rank run"; cat "$tmp/$name-one.log"; exit 1; }
  if ! grep -q "CPU simulation" "$tmp/$name-one.log" &&
    ! grep -q "cuda_fp32" "$tmp/$name-one.log"; then
    echo "FAIL: $name did not run on the simulated GPU"; cat "$tmp/$name-one.log"; exit 1
  fi
  local zero
  for zero in 0 1; do
    run_mpi 2 300 "$prefopt" train --config="$tmp/$name.textproto" \
      --run_dir="$tmp/$name-two-$zero" --set=batch.micro_batch_size=1 \
      --set=zero_stage=$zero --set=export_hf_path="$tmp/$name-two-$zero-model" \
      --set=save_every_steps=3 \
      >"$tmp/$name-two-$zero.log" 2>&1 ||
      { echo "FAIL: $name 2-rank run (zero_stage $zero)"; cat "$tmp/$name-two-$zero.log"; exit 1; }
    grep -q "data-parallel GPU ranks: staged GPU over mpi" "$tmp/$name-two-$zero.log" ||
      { echo "FAIL: $name: the ranks did not use the GPU communicator"; cat "$tmp/$name-two-$zero.log"; exit 1; }
    compare "$tmp/$name-one/metrics.jsonl" "$tmp/$name-two-$zero/metrics.jsonl" \
      "$name: 1 GPU rank x 4 == 2 GPU ranks x 2, zero_stage $zero"
    weights "$tmp/$name-one-model" "$tmp/$name-two-$zero-model" \
      "$name: 1 GPU rank == 2 GPU ranks, zero_stage $zero"
  done
  # The ZeRO-1 checkpoint (each rank's shard of the AdamW moments, from
  # device memory) resumes on 2 GPU ranks: steps 4-6 as the saving run's.
  run_mpi 2 300 "$prefopt" train --config="$tmp/$name.textproto" \
    --run_dir="$tmp/$name-resumed" --set=batch.micro_batch_size=1 \
    --set=zero_stage=1 --resume="$tmp/$name-two-1/checkpoints/step_3" \
    >"$tmp/$name-resumed.log" 2>&1 ||
    { echo "FAIL: $name 2-rank ZeRO-1 resume"; cat "$tmp/$name-resumed.log"; exit 1; }
  python3 - "$tmp/$name-two-1/metrics.jsonl" "$tmp/$name-resumed/metrics.jsonl" "$name" <<'PY' || exit 1
import json, sys
saved = {r["step"]: r for r in map(json.loads, open(sys.argv[1]))}
resumed = [json.loads(l) for l in open(sys.argv[2])]
assert [r["step"] for r in resumed] == [4, 5, 6], [r["step"] for r in resumed]
for r in resumed:
    for key in ("loss", "grad_norm", "lr"):
        a, b = saved[r["step"]][key], r[key]
        assert abs(a - b) <= 1e-5 * max(abs(a), 1e-3), f"step {r['step']} {key}: {a} vs {b}"
print(f"ok: {sys.argv[3]}: 2 GPU ranks with ZeRO-1 resume their step-3 checkpoint (steps 4-6 within 1e-5)")
PY
}

run_case dpo "dpo { beta: 0.1 }" "$fixtures/gpt2/pairs.jsonl"
run_case sft "sft {}" "$fixtures/demos.jsonl"
# KTO's KL estimate sums the ranks' pre-passes (host sums through the GPU
# communicator); the models swapped so that it is above 0. SparsePO's mask
# networks' gradients are summed with the policy's.
run_case kto "kto { beta: 0.5 desirable_weight: 1.33 }" \
  "$fixtures/gpt2/unpaired.jsonl" false reference policy
run_case sparsepo \
  "sparsepo { independent_masks: true l1_reward: 0.01 mask_init_std: 0.3 }" \
  "$fixtures/gpt2/pairs.jsonl"

# One GPU per rank: two ranks on a machine with one GPU are refused.
PREFOPT_CUDASIM_DEVICES=1 run_mpi 2 120 "$prefopt" train \
  --config="$tmp/dpo.textproto" --run_dir="$tmp/one-gpu" \
  --set=batch.micro_batch_size=1 >"$tmp/one-gpu.log" 2>&1
if [[ $? -eq 0 ]] || ! grep -q "rank 1: device: GPU, but GPU 1 cannot be used" "$tmp/one-gpu.log"; then
  echo "FAIL: two GPU ranks on one GPU were not refused"; cat "$tmp/one-gpu.log"; exit 1
fi
echo "ok: two GPU ranks on a machine with one GPU are refused"

# Ranks started with different configs refuse to train, naming what differs.
run_mpi 2 120 bash -c 'extra=""; [[ $OMPI_COMM_WORLD_RANK == 1 ]] && extra=--set=optimizer.lr=2e-3
  exec "$0" train --config="$1" --run_dir="$2" $extra' \
  "$prefopt" "$tmp/dpo.textproto" "$tmp/mismatch" >"$tmp/mismatch.log" 2>&1
if [[ $? -eq 0 ]] || ! grep -q "the resolved config differs across ranks" "$tmp/mismatch.log"; then
  echo "FAIL: GPU ranks with different configs were not refused"; cat "$tmp/mismatch.log"; exit 1
fi
echo "ok: GPU ranks with different configs are refused"

# Ranks that read different data under the same path (/dev/fd/3, opened on
# another file by rank 1) refuse to train.
head -n 5 "$fixtures/gpt2/pairs.jsonl" >"$tmp/other_pairs.jsonl"
sed -i "s|train_files: \"[^\"]*\"|train_files: \"/dev/fd/3\"|" "$tmp/dpo.textproto"
run_mpi 2 120 bash -c 'file="$1"; [[ $OMPI_COMM_WORLD_RANK == 1 ]] && file="$2"
  exec 3<"$file"; exec "$0" train --config="$3" --run_dir="$4"' \
  "$prefopt" "$fixtures/gpt2/pairs.jsonl" "$tmp/other_pairs.jsonl" \
  "$tmp/dpo.textproto" "$tmp/data-mismatch" >"$tmp/data-mismatch.log" 2>&1
if [[ $? -eq 0 ]] || ! grep -q "differs across ranks" "$tmp/data-mismatch.log"; then
  echo "FAIL: GPU ranks with different data were not refused"; cat "$tmp/data-mismatch.log"; exit 1
fi
echo "ok: GPU ranks with different data are refused: $(grep -o "[a-z ]*differs across ranks" "$tmp/data-mismatch.log" | head -1)"

# A killed GPU rank ends the whole job, non-zero, without hanging it.
cat >"$tmp/long.textproto" <<CONF
model { architecture: GPT2 vocab_size: 101 n_positions: 64 n_embd: 32 n_layer: 2 n_head: 4 }
data { train_files: "$fixtures/gpt2/pairs.jsonl" max_length: 64 }
objective { dpo { beta: 0.1 } }
optimizer { lr: 1e-4 }
batch { micro_batch_size: 1 global_batch_size: 2 }
device: GPU
precision: FP32
max_steps: 1000000
run_dir: "$tmp/long"
CONF
run_mpi 2 120 "$prefopt" train --config="$tmp/long.textproto" >"$tmp/long.log" 2>&1 &
job=$!
for _ in $(seq 1 300); do
  [[ -s "$tmp/long/metrics.jsonl" ]] && break
  sleep 0.2
done
[[ -s "$tmp/long/metrics.jsonl" ]] || { echo "FAIL: GPU training never started"; cat "$tmp/long.log"; exit 1; }
victim=$(pgrep -f -- "--config=$tmp/long.textproto" | sort -n | tail -1)
[[ -n "$victim" ]] || { echo "FAIL: no rank process found"; exit 1; }
start=$(date +%s%N)
kill -9 "$victim"
wait "$job"
rc=$?
elapsed_ms=$((($(date +%s%N) - start) / 1000000))
if [[ $rc -eq 0 || $rc -eq 124 ]]; then
  echo "FAIL: job exit status $rc after killing GPU rank pid $victim (124 = hung until the timeout)"
  cat "$tmp/long.log"; exit 1
fi
if ((elapsed_ms > 30000)); then echo "FAIL: the job took ${elapsed_ms} ms to end"; exit 1; fi
echo "ok: killed one GPU rank; the job ended with status $rc after ${elapsed_ms} ms"
