#!/usr/bin/env bash
# The full fine-tuning DPO step on the CPU, prefopt beside eager PyTorch on
# the same shapes (issue 15, item 6): GPT-2 small, one pair of 256 prompt +
# 256 response tokens per sequence, fp32, 2 threads, reference log-probs
# precomputed on both sides. A benchmark, not a test: it runs prefopt's
# dpo_step_bench and tests/benchmarks/torch_gpt2_dpo_step.py ROUNDS times,
# alternating, and prints each run, the best step time and peak RSS of each
# side, their ratios against the targets (>= 1.5x PyTorch's tokens/s,
# <= 0.6x its peak RSS), the CPU's vector features and the load average.
#
#   bazel build -c opt //trainer/loop:dpo_step_bench
#   tests/benchmarks/cpu_dpo_vs_torch.sh      # from the repository root
#
# Environment (all optional):
#   BENCH     prefopt's benchmark (default bazel-bin/trainer/loop/dpo_step_bench)
#   PYTHON    Python with torch and transformers (default /opt/ref-venv/bin/python)
#   ROUNDS=3  alternating runs of each side
#   STEPS=3   timed steps per run, after one warm-up step
#   PROMPT=256 RESPONSE=256
#   SHAPE     prefopt's and PyTorch's shape flags (default GPT-2 small:
#             "--n_embd=768 --n_layer=12 --n_head=12 --vocab=50257"; a dry
#             run: SHAPE="--n_embd=64 --n_layer=2 --n_head=4 --vocab=256")
set -u
cd "$(dirname "$0")/../.."
BENCH=${BENCH:-bazel-bin/trainer/loop/dpo_step_bench}
PYTHON=${PYTHON:-/opt/ref-venv/bin/python}
ROUNDS=${ROUNDS:-3}
STEPS=${STEPS:-3}
PROMPT=${PROMPT:-256}
RESPONSE=${RESPONSE:-256}
SHAPE=${SHAPE:-"--n_embd=768 --n_layer=12 --n_head=12 --vocab=50257"}

if [ ! -x "$BENCH" ]; then
  echo "$BENCH not built: bazel build -c opt //trainer/loop:dpo_step_bench" >&2
  exit 2
fi
echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
echo "vector features: $(grep -m1 '^flags' /proc/cpuinfo | tr ' ' '\n' |
  grep -E '^(sse4_2|avx|avx2|fma|f16c|avx512f|avx512bw|avx512vl|avx512_bf16|amx_tile)$' |
  tr '\n' ' ')"
echo "cores: $(nproc); load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "shape: $SHAPE, $PROMPT + $RESPONSE tokens per sequence, 1 pair, 2 threads"

best_prefopt_s="" best_prefopt_rss="" best_torch_s="" best_torch_rss=""
# min of the current best and a new value (empty: none yet).
min() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "" || b + 0 < a + 0) print b; else print a }'; }

for round in $(seq "$ROUNDS"); do
  out=$(OMP_NUM_THREADS=2 "$BENCH" $SHAPE --prompt="$PROMPT" \
    --response="$RESPONSE" --warmup=1 --steps="$STEPS" 2>&1)
  s=$(echo "$out" | awk '/^step time/ {print $3}')
  rss=$(echo "$out" | awk '/^peak RSS/ {print $3}')
  if [ -z "$s" ]; then
    echo "prefopt run $round FAILED:"; echo "$out"; exit 1
  fi
  echo "round $round prefopt: $s s/step, peak RSS $rss MiB"
  best_prefopt_s=$(min "$best_prefopt_s" "$s")
  best_prefopt_rss=$(min "$best_prefopt_rss" "$rss")

  out=$("$PYTHON" tests/benchmarks/torch_gpt2_dpo_step.py $SHAPE \
    --prompt="$PROMPT" --response="$RESPONSE" --threads=2 --warmup=1 \
    --steps="$STEPS" 2>&1)
  json=$(echo "$out" | sed -n 's/^torch_gpt2_dpo_step: //p')
  if [ -z "$json" ]; then
    echo "PyTorch run $round FAILED:"; echo "$out"; exit 1
  fi
  s=$(echo "$json" | "$PYTHON" -c 'import json,sys; print(json.load(sys.stdin)["step_s"])')
  rss=$(echo "$json" | "$PYTHON" -c 'import json,sys; print(json.load(sys.stdin)["peak_rss_mib"])')
  echo "round $round PyTorch: $s s/step, peak RSS $rss MiB ($json)"
  best_torch_s=$(min "$best_torch_s" "$s")
  best_torch_rss=$(min "$best_torch_rss" "$rss")
done

tokens=$((2 * (PROMPT + RESPONSE)))
awk -v ps="$best_prefopt_s" -v pr="$best_prefopt_rss" -v ts="$best_torch_s" \
    -v tr="$best_torch_rss" -v n="$tokens" 'BEGIN {
  printf "best of each: prefopt %.3f s/step (%.1f tokens/s), peak RSS %.0f MiB\n", ps, n / ps, pr
  printf "              PyTorch %.3f s/step (%.1f tokens/s), peak RSS %.0f MiB\n", ts, n / ts, tr
  speed = ts / ps; memory = pr / tr
  speed_ok = "not met"; if (speed >= 1.5) speed_ok = "met"
  memory_ok = "not met"; if (memory <= 0.6) memory_ok = "met"
  printf "prefopt tokens/s / PyTorch tokens/s = %.2fx (target >= 1.5x: %s)\n", speed, speed_ok
  printf "prefopt peak RSS / PyTorch peak RSS = %.2fx (target <= 0.6x: %s)\n", memory, memory_ok
}'
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
