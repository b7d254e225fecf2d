#!/usr/bin/env bash
# The GPU session's one script (an H200, at most 8 minutes). In order, with
# the longest each stage may take on the GPU (the whole run is cut at
# PREFOPT_GPU_DEADLINE_S, default 470 s; a later stage gets what is left):
#   1. build (Bazel; none with --prebuilt)                           <= 240 s
#   2. every test tagged "gpu": the CUDA backend's ops against the
#      CPU reference, and //tests:gpu_training_test, which trains
#      every objective with device: GPU against device: CPU
#      (end-to-end parity) and the same run twice (determinism)      <= 120 s
#   3. the benchmark: gpu_dpo_step_bench, a 1B Llama-shaped DPO
#      step (d 2048, 16 layers, 32/8 heads, V 128256, 16 pairs of
#      1024 + 1024 tokens, bf16; about 25 s), then
#      tests/gpu/torch_dpo_step.py on the same shapes (about 30 s),
#      and their comparison against the targets: MFU >= 45% of the
#      H200's 989 TFLOP/s, >= 1.5x PyTorch's tokens/s, <= 0.6x its
#      peak memory                                                   <= 150 s
#   4. op_bench, the CUDA backend's per-op throughput                 <= 40 s
#   5. compute-sanitizer memcheck, racecheck and synccheck over
#      cuda_backend_test, in whatever time is left
#   6. on a machine with 2 or more GPUs, 2 GPU ranks over NCCL against
#      1 with the doubled batch (skipped, saying so, with one GPU)
# Everything it finds goes to $OUT/gpu_summary.txt (gpu_summary.txt in the
# repository root when $OUT is unset) and to stdout. Exit status: 0 when
# nothing failed (a benchmark target missed is reported, not a failure), 1
# otherwise.
#
# Without a GPU (or with --dry-run) it runs everything that can run here
# and says what it skipped and why: the build (GPU binaries included), the
# tests tagged gpu (which skip themselves), the same end-to-end parity,
# determinism, device-selection and out-of-memory tests on the CUDA CPU
# simulation, the benchmark program on tiny shapes through the simulation and
# the PyTorch script on tiny shapes on the CPU (their times mean nothing; the
# comparison is printed but not judged). The dry run's budget is
# PREFOPT_GPU_DEADLINE_S too, default 2400 s (2 cores).
#
#   tests/gpu/run_gpu_checks.sh                 build with Bazel, then run
#   tests/gpu/run_gpu_checks.sh --dry-run       the checks that need no GPU
#   tests/gpu/run_gpu_checks.sh --bundle DIR    build with Bazel, copy the
#       gpu tests, op_bench, gpu_dpo_step_bench and the shared libraries they
#       need that a CUDA machine may lack (abseil, libgomp) into DIR, and stop
#   tests/gpu/run_gpu_checks.sh --prebuilt DIR  run from such a bundle (for a
#       GPU machine without Bazel: make the bundle here, keep DIR out of git
#       with .git/info/exclude and carry it along)
# A relative DIR is relative to the repository root.
#
# Without an option, a machine with no `bazel` uses ./.gpu_bundle if present.
# Environment: OUT (where the summary goes), PREFOPT_BAZEL_OUTPUT_BASE (Bazel
# output base; default ~/.cache/prefopt_gpu_checks on a GPU, the workspace's
# own in a dry run), PREFOPT_GPU_DEADLINE_S (the whole run's budget in
# seconds), PREFOPT_PYTHON (a Python with torch; default python3, else
# /opt/ref-venv/bin/python), PREFOPT_BENCH_ARGS (extra gpu_dpo_step_bench
# flags on a GPU, e.g. --activation_checkpointing=1).
set -u -o pipefail

cd "$(dirname "$0")/../.." || exit 1
readonly ROOT="$PWD"
readonly SUMMARY="${OUT:-$ROOT}/gpu_summary.txt"
LOGDIR="$(mktemp -d)"
readonly LOGDIR
readonly START_S="$SECONDS"
failed=0

mode=build
dry_run=0
bundle_dir=""
case "${1:-}" in
  --bundle) mode=bundle; bundle_dir="${2:?--bundle needs a directory}" ;;
  --prebuilt) mode=prebuilt; bundle_dir="${2:?--prebuilt needs a directory}" ;;
  --dry-run) dry_run=1 ;;
  "")
    if ! command -v bazel >/dev/null && [[ -d "$ROOT/.gpu_bundle" ]]; then
      mode=prebuilt
      bundle_dir="$ROOT/.gpu_bundle"
    fi
    ;;
  *) echo "usage: $0 [--dry-run | --bundle DIR | --prebuilt DIR]" >&2; exit 2 ;;
esac

mkdir -p "$(dirname "$SUMMARY")"
: >"$SUMMARY"
say() { echo "$*" | tee -a "$SUMMARY"; }

say "== prefopt GPU checks ($(date -u +%Y-%m-%dT%H:%M:%SZ)) =="
say "commit: $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)$(git -C "$ROOT" diff --quiet 2>/dev/null || echo ' (with local changes)')"
gpu_line="$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | head -1)"
if command -v nvidia-smi >/dev/null && nvidia-smi -L 2>/dev/null | grep -q '^GPU '; then
  say "gpu: $gpu_line"
elif [[ "$mode" != bundle ]]; then
  say "gpu: none ($(command -v nvidia-smi >/dev/null && echo "nvidia-smi: $gpu_line" || echo 'no nvidia-smi on this machine'))"
  ((dry_run)) || say "no GPU: running the dry run (what needs no GPU)"
  dry_run=1
fi
if ((dry_run)) && [[ "$mode" == prebuilt ]]; then
  say "prebuilt: FAILED: a dry run builds the simulated tests; run it where Bazel is"
  exit 1
fi
readonly DEADLINE_S="${PREFOPT_GPU_DEADLINE_S:-$( ((dry_run)) && echo 2400 || echo 470)}"
say "mode: $mode$( ((dry_run)) && echo ', dry run (no GPU)'); budget ${DEADLINE_S} s"

# Seconds for a stage: at most $1, and what the deadline leaves (at least 1:
# `timeout 0` would mean no limit; a stage out of time fails with exit 124).
budget() {
  local left=$((DEADLINE_S - (SECONDS - START_S)))
  ((left < 1)) && left=1
  ((left < $1)) && echo "$left" || echo "$1"
}

# Bazel in the checks' own output base on a GPU machine (a fresh build there
# must not disturb another), in the workspace's in a dry run.
bazel_cmd=(bazel)
if [[ -n "${PREFOPT_BAZEL_OUTPUT_BASE:-}" ]]; then
  bazel_cmd+=("--output_base=$PREFOPT_BAZEL_OUTPUT_BASE")
elif ((!dry_run)); then
  bazel_cmd+=("--output_base=$HOME/.cache/prefopt_gpu_checks")
fi

# The simulated counterparts of the GPU checks (dry run only).
readonly SIM_TESTS=(//tests:gpu_sim_training_test //tests:gpu_sim_memory_test
  //trainer/loop:device_select_test)

# ---- build ----
tests=()        # Bazel labels (build mode) or binary paths (prebuilt mode)
op_bench=""
step_bench=""
if [[ "$mode" != prebuilt ]]; then
  if ! command -v bazel >/dev/null; then
    say "build: FAILED: no bazel here; build a bundle on a machine with Bazel (--bundle) and use --prebuilt"
    exit 1
  fi
  # Every package of the project's own folders (not the bazel-* output
  # links a local build may have left in the workspace).
  universe=""
  for dir in */; do
    dir="${dir%/}"
    [[ "$dir" == bazel-* ]] && continue
    if [[ -n "$(find "$dir" \( -name BUILD -o -name BUILD.bazel \) -print -quit)" ]]; then
      universe+="${universe:+ + }//$dir/..."
    fi
  done
  mapfile -t tests < <("${bazel_cmd[@]}" query \
    "attr(tags, '\bgpu\b', tests($universe))" 2>"$LOGDIR/query.log")
  if ((${#tests[@]} == 0)); then
    say "build: FAILED: bazel query found no tests tagged gpu (see below)"
    tail -20 "$LOGDIR/query.log" | tee -a "$SUMMARY"
    exit 1
  fi
  targets=("${tests[@]}" //kernels/cuda:op_bench //trainer/loop:gpu_dpo_step_bench)
  ((dry_run)) && targets+=("${SIM_TESTS[@]}" //trainer/loop:gpu_dpo_step_bench_sim)
  build_start=$SECONDS
  if timeout "$(budget "$( ((dry_run)) && echo 1500 || echo 240)")" \
      "${bazel_cmd[@]}" build --symlink_prefix=/ "${targets[@]}" \
      >"$LOGDIR/build.log" 2>&1; then
    say "build: ok in $((SECONDS - build_start)) s (${#tests[@]} gpu tests, op_bench, gpu_dpo_step_bench$( ((dry_run)) && echo ', the simulated tests and gpu_dpo_step_bench_sim'))"
  else
    say "build: FAILED after $((SECONDS - build_start)) s; last lines:"
    grep -v 'linux-sandbox' "$LOGDIR/build.log" | tail -30 | tee -a "$SUMMARY"
    exit 1
  fi
  bin_dir="$("${bazel_cmd[@]}" info bazel-bin 2>/dev/null)"
  op_bench="$bin_dir/kernels/cuda/op_bench"
  step_bench="$bin_dir/trainer/loop/gpu_dpo_step_bench"
fi

if [[ "$mode" == bundle ]]; then
  rm -rf "$bundle_dir"
  mkdir -p "$bundle_dir/bin" "$bundle_dir/lib"
  binaries=()
  for label in "${tests[@]}" //kernels/cuda:op_bench //trainer/loop:gpu_dpo_step_bench; do
    path="${label#//}"
    binaries+=("$bin_dir/${path/://}")
  done
  cp "${binaries[@]}" "$bundle_dir/bin/"
  # Shared libraries (the project's own, which Bazel links tests against
  # dynamically, and the system's) other than glibc, the C++ runtime and CUDA
  # itself: the GPU machine has its own, newer ones. ldd runs on the binaries
  # where Bazel built them, whose run paths find the project's libraries.
  for bin in "${binaries[@]}"; do
    ldd "$bin" | awk '/=> \//{print $3}'
  done | sort -u | while read -r lib; do
    case "$(basename "$lib")" in
      libc.so* | libm.so* | libpthread.so* | libdl.so* | librt.so* | ld-linux* | \
        libstdc++.so* | libgcc_s.so* | libcuda.so* | libcudart.so* | \
        libcublas*.so* | libnccl.so* | libcudnn*.so*) ;;
      *) cp -L "$lib" "$bundle_dir/lib/" ;;
    esac
  done
  say "bundle: $(find "$bundle_dir/bin" -type f | wc -l) binaries, $(find "$bundle_dir/lib" -type f | wc -l) libraries, $(du -sh "$bundle_dir" | cut -f1) in $bundle_dir"
  exit 0
fi

if [[ "$mode" == prebuilt ]]; then
  if [[ ! -d "$bundle_dir/bin" ]]; then
    say "prebuilt: FAILED: $bundle_dir/bin does not exist (make it with --bundle)"
    exit 1
  fi
  # CUDA's libraries from the toolkit, else from PyTorch's nvidia-* wheels.
  wheel_libs="$(python3 -c 'import glob, os, nvidia
print(":".join(sorted(glob.glob(os.path.join(list(nvidia.__path__)[0], "*", "lib")))))' 2>/dev/null)"
  export LD_LIBRARY_PATH="$bundle_dir/lib:/usr/local/cuda/lib64${wheel_libs:+:$wheel_libs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  for bin in "$bundle_dir"/bin/*_test; do tests+=("$bin"); done
  op_bench="$bundle_dir/bin/op_bench"
  step_bench="$bundle_dir/bin/gpu_dpo_step_bench"
fi

# run_test LABEL_OR_PATH LIMIT_S: one gtest binary, one summary line (plus
# the failures), counting its cases.
run_test() {
  local t="$1" name="${1##*[/:]}" rc secs t_start
  local log="$LOGDIR/$name.log"
  t_start=$SECONDS
  if [[ "$mode" == prebuilt ]]; then
    timeout "$(budget "$2")" "$t" >"$log" 2>&1
  else
    timeout "$(budget "$2")" "${bazel_cmd[@]}" test --symlink_prefix=/ \
      --test_output=all "$t" >"$log" 2>&1
  fi
  rc=$?
  secs=$((SECONDS - t_start))
  # gtest's per-case result lines end in the case's time, "(12 ms)".
  local passed skipped failed_cases reason
  passed=$(grep -cE '^\[       OK \] .* \([0-9]+ ms\)$' "$log")
  skipped=$(grep -cE '^\[  SKIPPED \] .* \([0-9]+ ms\)$' "$log")
  failed_cases=$(grep -E '^\[  FAILED  \] .* \([0-9]+ ms\)$' "$log")
  reason=$(grep -m1 -o 'SKIPPED: no GPU.*' "$log")
  if ((rc != 0)); then
    failed=1
    say "FAILED  $t (exit $rc, $secs s): $passed passed, $skipped skipped"
    [[ -n "$failed_cases" ]] && echo "$failed_cases" | sed 's/^/    /' | tee -a "$SUMMARY"
    grep -B2 -A6 'Failure\|Check failed\|CudaBackend:\|Aborted\|Segmentation' "$log" |
      grep -v 'linux-sandbox' | head -40 | sed 's/^/    /' | tee -a "$SUMMARY"
  elif ((passed == 0 && skipped > 0)); then
    say "SKIPPED $t: all $skipped cases skipped: ${reason:-no reason printed}"
  else
    say "PASSED  $t ($secs s): $passed passed, $skipped skipped${reason:+ ($reason)}"
  fi
}

# ---- tests tagged gpu ----
say ""
say "== tests tagged gpu (ops against the CPU reference; gpu_training_test: every objective GPU vs CPU, and determinism) =="
for t in "${tests[@]}"; do run_test "$t" 120; done

if ((dry_run)); then
  say ""
  say "== the same checks on the CUDA CPU simulation (parity of every objective, determinism, device selection, out of memory) =="
  for t in "${SIM_TESTS[@]}"; do run_test "$t" 900; done
fi

# ---- benchmark ----
pybin="${PREFOPT_PYTHON:-python3}"
if ! "$pybin" -c 'import torch' 2>/dev/null && [[ -z "${PREFOPT_PYTHON:-}" ]] &&
  /opt/ref-venv/bin/python -c 'import torch' 2>/dev/null; then
  pybin=/opt/ref-venv/bin/python
fi
# One pair of shapes for both programs: the 1B model, or tiny ones.
if ((dry_run)); then
  bench_args=(--n_embd=64 --n_layer=2 --n_head=4 --n_kv_head=2 --intermediate=128
    --vocab=256 --prompt=16 --response=16 --pairs=4 --micro_pairs=2 --steps=2 --warmup=1)
  torch_args=(--device cpu --tiny --pairs 4 --micro-pairs 2 --prompt 16 --response 16
    --steps 2 --warmup 1)
  step_bench="$bin_dir/trainer/loop/gpu_dpo_step_bench_sim"
  say ""
  say "== benchmark, dry run: tiny shapes (d 64, 2 layers, V 256, 4 pairs of 16 + 16 tokens) =="
  say "SKIPPED: the 1B Llama-shaped DPO step (d 2048, 16 layers, 32/8 heads, V 128256, 16 pairs of 1024 + 1024 tokens, bf16) needs a GPU; running its drivers on tiny shapes instead: prefopt on the CUDA CPU simulation, PyTorch on the CPU (times mean nothing)"
else
  # Extra gpu_dpo_step_bench flags, e.g. --activation_checkpointing=1.
  read -ra bench_args <<<"${PREFOPT_BENCH_ARGS:-}"
  torch_args=()
  say ""
  say "== benchmark: 1B Llama-shaped DPO step (d 2048, 16 layers, 32/8 heads, FF 8192, V 128256, 16 pairs of 1024 + 1024 tokens, micro-batches of 4 pairs, bf16, reference log-probs precomputed)${PREFOPT_BENCH_ARGS:+; prefopt with $PREFOPT_BENCH_ARGS} =="
fi
prefopt_json=""
torch_json=""
t_start=$SECONDS
timeout "$(budget 150)" "$step_bench" "${bench_args[@]}" >"$LOGDIR/step_bench.log" 2>&1
rc=$?
if ((rc == 0)) && prefopt_json=$(grep -m1 '^gpu_dpo_step: ' "$LOGDIR/step_bench.log"); then
  say "prefopt ($((SECONDS - t_start)) s): ${prefopt_json#gpu_dpo_step: }"
else
  failed=1
  prefopt_json=""
  say "prefopt gpu_dpo_step_bench FAILED (exit $rc); last lines:"
  tail -15 "$LOGDIR/step_bench.log" | tee -a "$SUMMARY"
fi
if ! torch_err=$("$pybin" -c 'import torch' 2>&1); then
  say "SKIPPED PyTorch: torch not importable by $pybin ($(echo "$torch_err" | tail -1)); set PREFOPT_PYTHON"
else
  t_start=$SECONDS
  PYTHONUNBUFFERED=1 timeout "$(budget 150)" "$pybin" tests/gpu/torch_dpo_step.py \
    "${torch_args[@]}" >"$LOGDIR/torch.log" 2>&1
  rc=$?
  if ((rc == 0)) && torch_json=$(grep -m1 '^torch_dpo_step: ' "$LOGDIR/torch.log"); then
    say "PyTorch ($((SECONDS - t_start)) s): ${torch_json#torch_dpo_step: }"
  elif ((rc == 0)); then
    say "PyTorch: $(grep -m1 '^SKIPPED' "$LOGDIR/torch.log" || echo 'printed no result')"
  else
    failed=1
    say "torch_dpo_step FAILED (exit $rc); last lines:"
    tail -15 "$LOGDIR/torch.log" | tee -a "$SUMMARY"
  fi
fi
if [[ -n "$prefopt_json" && -n "$torch_json" ]]; then
  python3 - "$prefopt_json" "$torch_json" "$dry_run" <<'PY' | tee -a "$SUMMARY"
import json, sys
p = json.loads(sys.argv[1].split(": ", 1)[1])
t = json.loads(sys.argv[2].split(": ", 1)[1])
dry = sys.argv[3] == "1"
same = all(p[k] == t[k] for k in ("pairs", "micro_pairs", "prompt", "response"))
print("compared: the same model shape, %d pairs of %d + %d tokens in micro-batches "
      "of %d (%s), %d tokens per step; model FLOPs per step %.4e (prefopt) and "
      "%.4e (PyTorch), counted as trainer/loop/gpu_dpo_step_bench.cc says" % (
          p["pairs"], p["prompt"], p["response"], p["micro_pairs"],
          "same on both sides" if same else "DIFFERENT SHAPES", p["tokens_per_step"],
          p["model_flops_per_step"], t["model_flops_per_step"]))
rows = []
speed = p["tokens_per_s"] / t["tokens_per_s"]
rows.append(("tokens/s", "%.1f" % p["tokens_per_s"], "%.1f" % t["tokens_per_s"],
             ">= 1.5x PyTorch", "%.2fx" % speed, speed >= 1.5))
rows.append(("MFU of %.0f TFLOP/s" % p["peak_tflops"], "%.1f%%" % (100 * p["mfu"]),
             "%.1f%%" % (100 * t["mfu"]), ">= 45%", "%.1f%%" % (100 * p["mfu"]),
             p["mfu"] >= 0.45))
if t.get("peak_mem_gib"):
    mem = p["peak_mem_gib"] / t["peak_mem_gib"]
    rows.append(("peak device memory", "%.2f GiB" % p["peak_mem_gib"],
                 "%.2f GiB" % t["peak_mem_gib"], "<= 0.6x PyTorch", "%.2fx" % mem,
                 mem <= 0.6))
else:
    rows.append(("peak device memory", "%.3f GiB" % p["peak_mem_gib"], "n/a (CPU)",
                 "<= 0.6x PyTorch", "n/a", None))
print("%-22s %14s %14s %17s %9s  %s" % ("", "prefopt", "PyTorch", "target", "value", "result"))
met = 0
for name, a, b, target, value, ok in rows:
    verdict = ("not judged (dry run)" if dry else
               "n/a" if ok is None else "MET" if ok else "MISSED")
    met += bool(ok) and not dry
    print("%-22s %14s %14s %17s %9s  %s" % (name, a, b, target, value, verdict))
if dry:
    print("targets: not judged (tiny shapes, simulated GPU against the CPU)")
else:
    print("targets: %d of %d met (a missed target is reported, not a failure)" % (met, len(rows)))
PY
fi

# ---- op_bench ----
say ""
say "== op_bench (CudaBackend per-op throughput) =="
if timeout "$(budget 40)" "$op_bench" >"$LOGDIR/op_bench.log" 2>&1; then
  grep -E '^op_bench:|^SKIPPED|^  - |would measure' "$LOGDIR/op_bench.log" | tee -a "$SUMMARY"
else
  failed=1
  say "op_bench FAILED (exit $?); last lines:"
  tail -20 "$LOGDIR/op_bench.log" | tee -a "$SUMMARY"
fi

# ---- compute-sanitizer over the backend test ----
say ""
say "== compute-sanitizer (memcheck, racecheck, synccheck) over cuda_backend_test =="
sanitizer="$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)"
backend_test=""
for t in "${tests[@]}"; do
  [[ "${t##*[/:]}" == cuda_backend_test ]] && backend_test="$t"
done
if [[ -n "$backend_test" && "$mode" != prebuilt ]]; then
  backend_test="$bin_dir/kernels/cuda/cuda_backend_test"
fi
if ((dry_run)); then
  say "SKIPPED: no GPU (compute-sanitizer runs kernels on the device); the simulation's own checks are tests/sanitize_cuda_sim.sh (ASan, TSan)"
elif [[ ! -x "$sanitizer" ]]; then
  say "SKIPPED: no compute-sanitizer (not in PATH or /usr/local/cuda/bin)"
elif [[ -z "$backend_test" || ! -x "$backend_test" ]]; then
  say "SKIPPED: cuda_backend_test binary not found"
else
  # memcheck over every op; racecheck and synccheck (slower) over the kernels
  # that use shared memory and barriers.
  for tool in memcheck racecheck synccheck; do
    filter='*'
    [[ "$tool" != memcheck ]] && filter='*Attention*:*LayerNorm*:*RmsNorm*:*OutputLayer*:*SumSquares*'
    if (((DEADLINE_S - (SECONDS - START_S)) < 10)); then
      say "SKIPPED compute-sanitizer --tool $tool: the run's budget is spent"
      continue
    fi
    t_start=$SECONDS
    timeout "$(budget 120)" "$sanitizer" --tool "$tool" --error-exitcode 3 \
      "$backend_test" --gtest_filter="$filter" >"$LOGDIR/sanitizer_$tool.log" 2>&1
    rc=$?
    errors=$(grep -m1 -oE 'ERROR SUMMARY: [0-9]+ errors?' "$LOGDIR/sanitizer_$tool.log")
    if ((rc == 0)); then
      say "PASSED  compute-sanitizer --tool $tool ($((SECONDS - t_start)) s): ${errors:-no summary}"
    else
      failed=1
      say "FAILED  compute-sanitizer --tool $tool (exit $rc, $((SECONDS - t_start)) s): ${errors:-no summary}"
      grep -E '=========' "$LOGDIR/sanitizer_$tool.log" | head -30 | tee -a "$SUMMARY"
    fi
  done
fi

# ---- data-parallel GPU ranks (NCCL) ----
# Two ranks, one GPU each, against one rank with the doubled batch on the tiny
# GPT-2 fixture (as //tests:gpu_data_parallel_test does on the simulation).
say ""
say "== data-parallel GPU ranks over NCCL =="
gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU ')
if ((gpus < 2)); then
  say "SKIPPED: ${gpus} GPU(s) here; data-parallel GPU ranks need one GPU per rank (prefopt refuses two ranks on one GPU), so NCCL between GPUs is not checked on this machine"
elif [[ "$mode" == prebuilt ]]; then
  say "SKIPPED: prefopt is not in the prebuilt bundle; run this script where Bazel is"
elif ! command -v mpirun >/dev/null; then
  say "SKIPPED: no mpirun"
elif ! timeout "$(budget 240)" "${bazel_cmd[@]}" build --symlink_prefix=/ //launch:prefopt >"$LOGDIR/dp_build.log" 2>&1; then
  failed=1
  say "prefopt build FAILED; last lines:"
  grep -v 'linux-sandbox' "$LOGDIR/dp_build.log" | tail -15 | tee -a "$SUMMARY"
else
  dp_dir="$(mktemp -d)"
  cat >"$dp_dir/dpo.textproto" <<CONF
model { hf_path: "$ROOT/tests/fixtures/gpt2/policy" reference_hf_path: "$ROOT/tests/fixtures/gpt2/reference" }
data { train_files: "$ROOT/tests/fixtures/gpt2/pairs.jsonl" max_length: 64 }
objective { dpo { beta: 0.1 } }
optimizer { lr: 1e-3 }
batch { micro_batch_size: 2 global_batch_size: 4 }
device: GPU
precision: FP32
max_steps: 6
seed: 5
CONF
  dp_ok=1
  timeout "$(budget 60)" "$bin_dir/launch/prefopt" train --config="$dp_dir/dpo.textproto" \
    --run_dir="$dp_dir/one" >"$LOGDIR/dp_one.log" 2>&1 || dp_ok=0
  for zero in 0 1; do
    ((dp_ok)) || break
    timeout "$(budget 90)" mpirun --allow-run-as-root -np 2 "$bin_dir/launch/prefopt" train \
      --config="$dp_dir/dpo.textproto" --run_dir="$dp_dir/two-$zero" \
      --set=batch.micro_batch_size=1 --set=zero_stage=$zero >"$LOGDIR/dp_two_$zero.log" 2>&1 || dp_ok=0
    ((dp_ok)) && python3 - "$dp_dir/one/metrics.jsonl" "$dp_dir/two-$zero/metrics.jsonl" "$zero" <<'PY' | tee -a "$SUMMARY" || dp_ok=0
import json, sys
one = [json.loads(l) for l in open(sys.argv[1])]
two = [json.loads(l) for l in open(sys.argv[2])]
assert len(one) == len(two) == 6, (len(one), len(two))
worst = max(abs(a[k] - b[k]) / max(abs(a[k]), 1e-3) for a, b in zip(one, two)
            for k in ("loss", "grad_norm", "rewards/margins", "logps/chosen"))
print(f"2 GPU ranks (zero_stage {sys.argv[3]}) vs 1: worst relative difference {worst:.2e}")
assert worst < 1e-4, "2 GPU ranks differ from 1"
PY
  done
  if ((dp_ok)); then
    say "data-parallel GPU ranks ok"
  else
    failed=1
    say "data-parallel GPU ranks FAILED; last lines:"
    tail -15 "$LOGDIR"/dp_*.log | tee -a "$SUMMARY"
  fi
fi

say ""
say "== done in $((SECONDS - START_S)) s; $([[ $failed == 0 ]] && echo 'nothing failed' || echo 'FAILURES above') =="
say "summary: $SUMMARY"
exit "$failed"
