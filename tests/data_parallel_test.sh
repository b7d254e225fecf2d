#!/usr/bin/env bash
# Data-parallel training with real processes: `mpirun -np 2` with 2 examples per
# rank per step must retrace one rank with the doubled batch (4 examples per
# step, in 2 micro-batches), step for step, within fp32 summation-order noise.
# The evaluations split across ranks (every 3 steps in training, and `prefopt
# eval`) must equal one rank's too.
set -uo pipefail

prefopt="$PWD/$1"
source "$PWD/comm/mpi_env.sh"
fixtures="$PWD/tests/fixtures/gpt2"
tmp="${TEST_TMPDIR:-$(mktemp -d)}"

cat >"$tmp/dp.textproto" <<CONF
model { hf_path: "$fixtures/policy" reference_hf_path: "$fixtures/reference" }
data {
  train_files: "$fixtures/pairs.jsonl"
  eval_files: "$fixtures/pairs.jsonl"
  max_length: 64
  shuffle: true
}
eval_every_steps: 3
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

"$prefopt" eval --config="$tmp/dp.textproto" --model="$fixtures/policy" \
  --run_dir="$tmp/eval_one" >"$tmp/eval_one.log" 2>&1 ||
  { echo "FAIL: single-rank eval"; cat "$tmp/eval_one.log"; exit 1; }
run_mpi 2 120 "$prefopt" eval --config="$tmp/dp.textproto" \
  --model="$fixtures/policy" --run_dir="$tmp/eval_two" \
  --set=batch.micro_batch_size=1 >"$tmp/eval_two.log" 2>&1 ||
  { echo "FAIL: 2-rank eval"; cat "$tmp/eval_two.log"; exit 1; }

python3 - "$tmp/one/metrics.jsonl" "$tmp/two/metrics.jsonl" \
  "$tmp/eval_one/eval.json" "$tmp/eval_two/eval.json" <<'PY'
import json, sys
one = [json.loads(l) for l in open(sys.argv[1])]
two = [json.loads(l) for l in open(sys.argv[2])]
worst = 0.0
def check(a, b, keys, what):
    global worst
    for key in keys:
        x, y = a[key], b[key]
        err = abs(x - y) / max(abs(x), 1e-6)
        worst = max(worst, err)
        assert err < 1e-4, f"{what} {key}: 1 rank {x}, 2 ranks {y}"
train = [(a, b) for a, b in zip(one, two) if "loss" in a]
evals = [(a, b) for a, b in zip(one, two) if "eval_loss" in a]
assert len(one) == len(two) == 8 and len(train) == 6, (len(one), len(two))
for a, b in train:
    check(a, b, ("loss", "grad_norm", "rewards/margins", "logps/chosen"),
          f"step {a['step']}")
assert [a["step"] for a, _ in evals] == [3, 6], evals
for a, b in evals:
    assert "eval_loss" in b, b
    check(a, b, ("eval_loss", "eval_rewards/margins", "eval_ranking/accuracy",
                 "eval_ranking/idealized_accuracy"), f"eval at {a['step']}")
e1, e2 = (json.load(open(p)) for p in sys.argv[3:5])
check(e1, e2, [k for k in e1 if k not in ("model", "examples")], "prefopt eval")
print(f"ok: 6 steps and 2 evaluations, 1 rank x 4 pairs == 2 ranks x 2 pairs, "
      f"and prefopt eval on 2 ranks == 1 (worst relative difference "
      f"{worst:.2e})")
PY
