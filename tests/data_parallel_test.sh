#!/usr/bin/env bash
# Data-parallel training with real processes: `mpirun -np 2` with 2 examples per
# rank per step must retrace one rank with the doubled batch (4 examples per
# step, in 2 micro-batches), step for step, within fp32 summation-order noise;
# and ZeRO-1 (sharded AdamW state) must retrace the unsharded optimizer.
set -uo pipefail

prefopt="$PWD/$1"
source "$PWD/comm/mpi_env.sh"
fixtures="$PWD/tests/fixtures/gpt2"
tmp="${TEST_TMPDIR:-$(mktemp -d)}"

cat >"$tmp/dp.textproto" <<CONF
model { hf_path: "$fixtures/policy" reference_hf_path: "$fixtures/reference" }
data { train_files: "$fixtures/pairs.jsonl" max_length: 64 shuffle: true }
objective { dpo { beta: 0.1 } }
optimizer { lr: 1e-3 weight_decay: 0.01 max_grad_norm: 1.0 }
batch { micro_batch_size: 2 global_batch_size: 4 }
max_steps: 6
seed: 5
CONF

"$prefopt" train --config="$tmp/dp.textproto" --run_dir="$tmp/one" >"$tmp/one.log" 2>&1 ||
  { echo "FAIL: single-rank run"; cat "$tmp/one.log"; exit 1; }
run_mpi 2 120 "$prefopt" train --config="$tmp/dp.textproto" --run_dir="$tmp/two" \
  --set=batch.micro_batch_size=1 >"$tmp/two.log" 2>&1 ||
  { echo "FAIL: 2-rank run"; cat "$tmp/two.log"; exit 1; }

run_mpi 2 120 "$prefopt" train --config="$tmp/dp.textproto" --run_dir="$tmp/zero1" \
  --set=batch.micro_batch_size=1 --set=zero_stage=1 >"$tmp/zero1.log" 2>&1 ||
  { echo "FAIL: 2-rank ZeRO-1 run"; cat "$tmp/zero1.log"; exit 1; }

# compare A B LABEL: per-step loss and gradient metrics within fp32 noise.
compare() {
  python3 - "$1" "$2" "$3" <<'PY'
import json, sys
one = [json.loads(l) for l in open(sys.argv[1])]
two = [json.loads(l) for l in open(sys.argv[2])]
assert len(one) == len(two) == 6, (len(one), len(two))
worst = 0.0
for a, b in zip(one, two):
    for key in ("loss", "grad_norm", "rewards/margins", "logps/chosen"):
        x, y = a[key], b[key]
        err = abs(x - y) / max(abs(x), 1e-6)
        worst = max(worst, err)
        assert err < 1e-4, f"{sys.argv[3]}: step {a['step']} {key}: {x} vs {y}"
print(f"ok: {sys.argv[3]}, 6 steps (worst relative difference {worst:.2e})")
PY
}
compare "$tmp/one/metrics.jsonl" "$tmp/two/metrics.jsonl" \
  "1 rank x 4 pairs == 2 ranks x 2 pairs" || exit 1
compare "$tmp/two/metrics.jsonl" "$tmp/zero1/metrics.jsonl" \
  "2 ranks ZeRO-1 == 2 ranks unsharded" || exit 1
