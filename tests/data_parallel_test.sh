#!/usr/bin/env bash
# Data-parallel training with real processes: `mpirun -np 2` with 2 examples per
# rank per step must retrace one rank with the doubled batch (4 examples per
# step, in 2 micro-batches), step for step, within fp32 summation-order noise.
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

python3 - "$tmp/one/metrics.jsonl" "$tmp/two/metrics.jsonl" <<'PY'
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
        assert err < 1e-4, f"step {a['step']} {key}: 1 rank {x}, 2 ranks {y}"
print(f"ok: 6 steps, 1 rank x 4 pairs == 2 ranks x 2 pairs "
      f"(worst relative difference {worst:.2e})")
PY
