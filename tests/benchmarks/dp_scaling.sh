#!/usr/bin/env bash
# Data-parallel scaling on the CPU: training throughput of 1 rank vs 2 ranks
# (mpirun -np 2, gradients all-reduced over MPI) at EQUAL work per rank, and
# the MPI all-reduce bus bandwidth sweep. A benchmark, not a test: it prints
# numbers (and the load average next to each, since other work on the
# machine distorts them).
#
#   bazel build //launch:prefopt //comm:allreduce_bench
#   tests/benchmarks/dp_scaling.sh            # from the repository root
#
# Environment (all optional):
#   PREFOPT          the prefopt binary       (default bazel-bin/launch/prefopt)
#   ALLREDUCE_BENCH  the all-reduce benchmark (default bazel-bin/comm/allreduce_bench)
#   MICRO=8          pairs per rank per step (one micro-batch; no accumulation)
#   STEPS=10         optimizer steps per run; the first WARMUP are not counted
#   WARMUP=2
#   VOCAB=50257      GPT-2's vocabulary; the model is GPT-2 with n_embd 256,
#                    4 layers, 4 heads, 128 positions, from random init
#   SKIP_ALLREDUCE=1 skips the all-reduce sweep
#   SKIP_TRAINING=1  skips the training runs
#   VADER_SINGLE_COPY  Open MPI's shared-memory single-copy mechanism for
#                    large messages: "none" (default, as in the tests:
#                    messages are copied through shared-memory fragments) or
#                    "cma" (process_vm_readv; needs ptrace permission between
#                    the ranks, which container security profiles may deny)
#   OUT_DIR          where data, configs and run dirs go (default: a new
#                    directory under /tmp, removed at the end)
#
# Runs, all on the same random pre-tokenized pairs (prompt 64 + response 64
# tokens, so every sequence is 128 tokens and no step has padding):
#   A. 1 rank,  OMP_NUM_THREADS=1: MICRO pairs per step          (1 core)
#   B. 2 ranks, OMP_NUM_THREADS=1 each: MICRO pairs per rank,
#      global batch 2*MICRO                                       (2 cores)
#   C. 1 rank,  OMP_NUM_THREADS=2: global batch 2*MICRO in 2 micro-batches
#      of MICRO, the same work per step as B                      (2 cores)
# Speedup = throughput(B) / throughput(A): each rank of B does exactly A's
# work per step, on its own core, plus the gradient all-reduce. C shows what
# the same 2 cores give to one rank's threads instead.
#
# Throughput is tokens/s of the training steps (metrics.jsonl's
# tokens_per_second: all ranks' tokens over the step's wall time, from batch
# to updated weights), aggregated over the counted steps as
# tokens / total time. The reference log-probs are precomputed before step 1
# and not counted.
set -uo pipefail

PREFOPT="${PREFOPT:-bazel-bin/launch/prefopt}"
ALLREDUCE_BENCH="${ALLREDUCE_BENCH:-bazel-bin/comm/allreduce_bench}"
MICRO="${MICRO:-8}"
STEPS="${STEPS:-10}"
WARMUP="${WARMUP:-2}"
VOCAB="${VOCAB:-50257}"

die() {
  echo "dp_scaling: $*" >&2
  exit 1
}
[[ -x "${PREFOPT}" ]] || die "no prefopt at ${PREFOPT}: bazel build //launch:prefopt, or set PREFOPT"
PREFOPT="$(readlink -f "${PREFOPT}")"
((STEPS > WARMUP)) || die "STEPS (${STEPS}) must exceed WARMUP (${WARMUP})"
[[ -f comm/mpi_env.sh ]] || die "run from the repository root (comm/mpi_env.sh not found)"

# Open MPI settings of the multi-process tests (allow root, shared memory
# only, no core binding: each rank runs its one thread wherever the kernel
# puts it) and run_mpi.
source comm/mpi_env.sh
export OMPI_MCA_btl_vader_single_copy_mechanism="${VADER_SINGLE_COPY:-none}"
if [[ -n "${OUT_DIR:-}" ]]; then
  work="${OUT_DIR}"
  mkdir -p "${work}"
  trap 'rm -rf "${MPI_TMPDIR}"' EXIT
else
  work="$(mktemp -d /tmp/prefopt-dp-scaling.XXXXXX)"
  trap 'rm -rf "${MPI_TMPDIR}" "${work}"' EXIT
fi

load() { cut -d' ' -f1-3 /proc/loadavg; }

echo "# dp_scaling: $(date -Is) on $(hostname -s)"
echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cores"
echo "prefopt: ${PREFOPT}"
echo "model: GPT-2 from scratch, vocab ${VOCAB}, n_embd 256, 4 layers, 4 heads;" \
  "pairs of prompt 64 + response 64 tokens; DPO (sigmoid, beta 0.1)"
echo "per-rank micro-batch ${MICRO} pairs; ${STEPS} steps per run, first ${WARMUP} not counted"
echo "Open MPI: btl self,vader (single copy: ${OMPI_MCA_btl_vader_single_copy_mechanism}), no binding"
echo

# Enough pairs for the largest global batch (2*MICRO) over STEPS steps, so
# that no run wraps around into a second epoch.
pairs=$((2 * MICRO * STEPS))
python3 - "${work}/pairs.jsonl" "${pairs}" "${VOCAB}" <<'PY' || die "could not write the data"
import json, random, sys
path, n, vocab = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rng = random.Random(1234)
ids = lambda k: [rng.randrange(vocab) for _ in range(k)]
with open(path, "w") as f:
    for _ in range(n):
        f.write(json.dumps({"prompt_ids": ids(64), "chosen_ids": ids(64),
                            "rejected_ids": ids(64)}) + "\n")
PY
cat >"${work}/bench.textproto" <<CONF
model { architecture: GPT2 vocab_size: ${VOCAB} n_positions: 128 n_embd: 256 n_layer: 4 n_head: 4 }
data { train_files: "${work}/pairs.jsonl" max_length: 128 max_prompt_length: 64 }
objective { dpo { beta: 0.1 } }
optimizer { lr: 1e-4 weight_decay: 0.01 max_grad_norm: 1.0 }
batch { micro_batch_size: ${MICRO} global_batch_size: ${MICRO} }
max_steps: ${STEPS}
seed: 1
CONF

# summarize NAME RUN_DIR LOAD_BEFORE LOAD_AFTER WALL_S: one result line, and
# the aggregate tokens/s in ${work}/NAME.tps.
summarize() {
  python3 - "$@" "${WARMUP}" "${work}" <<'PY'
import json, statistics, sys
name, run_dir, load_before, load_after, wall, warmup, work = sys.argv[1:8]
rows = [json.loads(l) for l in open(f"{run_dir}/metrics.jsonl") if l.strip()]
tps = [r["tokens_per_second"] for r in rows[int(warmup):]]
# Every step has the same number of tokens, so tokens / total time is the
# harmonic mean of the per-step rates.
agg = len(tps) / sum(1.0 / t for t in tps)
open(f"{work}/{name}.tps", "w").write(f"{agg}\n")
print(f"{name}: {agg:9.1f} tokens/s  (per step: median {statistics.median(tps):.1f}, "
      f"min {min(tps):.1f}, max {max(tps):.1f}; {len(tps)} steps; run {wall} s)  "
      f"load {load_before} -> {load_after}")
PY
}

# run NAME NP THREADS GLOBAL: one training run.
run() {
  local name="$1" np="$2" threads="$3" global="$4"
  local dir="${work}/runs/${name}" before after start rc
  rm -rf "${dir}"
  before="$(load)"
  start=$(date +%s)
  if ((np == 1)); then
    OMP_NUM_THREADS="${threads}" timeout 1800 "${PREFOPT}" train \
      --config="${work}/bench.textproto" --run_dir="${dir}" \
      --set=batch.global_batch_size="${global}" >"${work}/${name}.log" 2>&1
  else
    # mpirun passes this environment (OMP_NUM_THREADS included) to its local ranks.
    OMP_NUM_THREADS="${threads}" run_mpi "${np}" 1800 "${PREFOPT}" train \
      --config="${work}/bench.textproto" --run_dir="${dir}" \
      --set=batch.global_batch_size="${global}" >"${work}/${name}.log" 2>&1
  fi
  rc=$?
  after="$(load)"
  if ((rc != 0)); then
    tail -n 20 "${work}/${name}.log" >&2
    die "run ${name} failed (exit status ${rc})"
  fi
  summarize "${name}" "${dir}" "${before}" "${after}" "$(($(date +%s) - start))"
}

if [[ "${SKIP_TRAINING:-0}" != 1 ]]; then
  echo "## Training throughput (tokens/s; load average 1/5/15 min before -> after each run)"
  run "A_1rank_1thread" 1 1 "${MICRO}"
  run "B_2ranks_1thread" 2 1 "$((2 * MICRO))"
  run "C_1rank_2threads" 1 2 "$((2 * MICRO))"
  python3 - "${work}" <<'PY'
import sys
w = sys.argv[1]
a, b, c = (float(open(f"{w}/{n}.tps").read()) for n in
           ("A_1rank_1thread", "B_2ranks_1thread", "C_1rank_2threads"))
print(f"speedup 2 ranks / 1 rank (1 thread each, equal work per rank): {b / a:.2f}x "
      f"(parallel efficiency {b / a / 2:.0%})")
print(f"for context: 1 rank x 2 threads / 1 rank x 1 thread: {c / a:.2f}x; "
      f"2 ranks x 1 thread / 1 rank x 2 threads: {b / c:.2f}x")
PY
  echo
fi

if [[ "${SKIP_ALLREDUCE:-0}" != 1 ]]; then
  [[ -x "${ALLREDUCE_BENCH}" ]] ||
    die "no allreduce_bench at ${ALLREDUCE_BENCH}: bazel build //comm:allreduce_bench, or set ALLREDUCE_BENCH"
  echo "## MPI all-reduce, 2 ranks (nccl-tests convention: busbw = algbw * 2(n-1)/n)"
  echo "load before: $(load)"
  run_mpi 2 600 "$(readlink -f "${ALLREDUCE_BENCH}")" >"${work}/allreduce.log" 2>&1 ||
    { cat "${work}/allreduce.log" >&2; die "allreduce_bench failed"; }
  # Rank 0's table, without mpirun's [1,0]<stdout>: tags.
  sed -n 's/^\[[0-9]*,0\]<stdout>: \{0,1\}//p' "${work}/allreduce.log"
  echo "load after: $(load)"
fi
