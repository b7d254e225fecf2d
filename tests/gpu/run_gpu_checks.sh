#!/usr/bin/env bash
# The GPU session's one script (an H200, at most 8 minutes): build, run every
# test tagged "gpu", run the CUDA backend test under NVIDIA's compute-sanitizer
# (memcheck, racecheck, synccheck), benchmark the CUDA backend's ops, time a
# PyTorch DPO step
# for comparison, and the end-to-end prefopt DPO step once the trainer can
# select the CUDA backend. Everything it finds goes to $OUT/gpu_summary.txt
# (gpu_summary.txt in the repository root when $OUT is unset) and to stdout.
# Exit status: 0 when nothing failed (tests skipped for want of a GPU count as
# not failed, and say so), 1 otherwise.
#
#   tests/gpu/run_gpu_checks.sh                 build with Bazel, then run
#   tests/gpu/run_gpu_checks.sh --bundle DIR    build with Bazel, copy the
#       gpu tests, op_bench and the shared libraries they need that a CUDA
#       machine may lack (abseil, libgomp) into DIR, and stop
#   tests/gpu/run_gpu_checks.sh --prebuilt DIR  run from such a bundle (for a
#       GPU machine without Bazel: make the bundle here, keep DIR out of git
#       with .git/info/exclude and carry it along)
# A relative DIR is relative to the repository root.
#
# Without an option, a machine with no `bazel` uses ./.gpu_bundle if present.
# Environment: OUT (where the summary goes), PREFOPT_BAZEL_OUTPUT_BASE (Bazel
# output base, default ~/.cache/prefopt_gpu_checks), PREFOPT_GPU_DEADLINE_S
# (the whole run's budget in seconds, default 470).
set -u -o pipefail

cd "$(dirname "$0")/../.." || exit 1
readonly ROOT="$PWD"
readonly SUMMARY="${OUT:-$ROOT}/gpu_summary.txt"
LOGDIR="$(mktemp -d)"
readonly LOGDIR
readonly START_S="$SECONDS"
readonly DEADLINE_S="${PREFOPT_GPU_DEADLINE_S:-470}"
readonly OUTPUT_BASE="${PREFOPT_BAZEL_OUTPUT_BASE:-$HOME/.cache/prefopt_gpu_checks}"
failed=0

mode=build
bundle_dir=""
case "${1:-}" in
  --bundle) mode=bundle; bundle_dir="${2:?--bundle needs a directory}" ;;
  --prebuilt) mode=prebuilt; bundle_dir="${2:?--prebuilt needs a directory}" ;;
  "")
    if ! command -v bazel >/dev/null && [[ -d "$ROOT/.gpu_bundle" ]]; then
      mode=prebuilt
      bundle_dir="$ROOT/.gpu_bundle"
    fi
    ;;
  *) echo "usage: $0 [--bundle DIR | --prebuilt DIR]" >&2; exit 2 ;;
esac

mkdir -p "$(dirname "$SUMMARY")"
: >"$SUMMARY"
say() { echo "$*" | tee -a "$SUMMARY"; }

# Seconds for a stage: at most $1, and what the deadline leaves (at least 1:
# `timeout 0` would mean no limit; a stage out of time fails with exit 124).
budget() {
  local left=$((DEADLINE_S - (SECONDS - START_S)))
  ((left < 1)) && left=1
  ((left < $1)) && echo "$left" || echo "$1"
}

say "== prefopt GPU checks ($(date -u +%Y-%m-%dT%H:%M:%SZ)) =="
say "commit: $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)$(git -C "$ROOT" diff --quiet 2>/dev/null || echo ' (with local changes)')"
if command -v nvidia-smi >/dev/null; then
  say "gpu: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | head -1)"
else
  say "gpu: none (no nvidia-smi on this machine)"
fi
say "mode: $mode"

# ---- build ----
tests=()        # Bazel labels (build mode) or binary paths (prebuilt mode)
op_bench=""
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
  mapfile -t tests < <(bazel --output_base="$OUTPUT_BASE" query \
    "attr(tags, '\bgpu\b', tests($universe))" 2>"$LOGDIR/query.log")
  if ((${#tests[@]} == 0)); then
    say "build: FAILED: bazel query found no tests tagged gpu (see below)"
    tail -20 "$LOGDIR/query.log" | tee -a "$SUMMARY"
    exit 1
  fi
  build_start=$SECONDS
  if timeout "$(budget 300)" bazel --output_base="$OUTPUT_BASE" build \
      --symlink_prefix=/ "${tests[@]}" //kernels/cuda:op_bench \
      >"$LOGDIR/build.log" 2>&1; then
    say "build: ok in $((SECONDS - build_start)) s (${#tests[@]} gpu tests + //kernels/cuda:op_bench)"
  else
    say "build: FAILED after $((SECONDS - build_start)) s; last lines:"
    grep -v 'linux-sandbox' "$LOGDIR/build.log" | tail -30 | tee -a "$SUMMARY"
    exit 1
  fi
  bin_dir="$(bazel --output_base="$OUTPUT_BASE" info bazel-bin 2>/dev/null)"
  op_bench="$bin_dir/kernels/cuda/op_bench"
fi

if [[ "$mode" == bundle ]]; then
  rm -rf "$bundle_dir"
  mkdir -p "$bundle_dir/bin" "$bundle_dir/lib"
  binaries=()
  for label in "${tests[@]}" //kernels/cuda:op_bench; do
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
fi

# ---- tests tagged gpu ----
say ""
say "== tests tagged gpu =="
for t in "${tests[@]}"; do
  name="${t##*[/:]}"
  log="$LOGDIR/$name.log"
  t_start=$SECONDS
  if [[ "$mode" == prebuilt ]]; then
    timeout "$(budget 180)" "$t" >"$log" 2>&1
  else
    timeout "$(budget 180)" bazel --output_base="$OUTPUT_BASE" test \
      --symlink_prefix=/ --test_output=all "$t" >"$log" 2>&1
  fi
  rc=$?
  secs=$((SECONDS - t_start))
  # gtest's per-case result lines end in the case's time, "(12 ms)".
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
done

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
if [[ ! -x "$sanitizer" ]]; then
  say "SKIPPED: no compute-sanitizer (not in PATH or /usr/local/cuda/bin)"
elif [[ -z "$backend_test" || ! -x "$backend_test" ]]; then
  say "SKIPPED: cuda_backend_test binary not found"
elif ! nvidia-smi >/dev/null 2>&1; then
  say "SKIPPED: no GPU (nvidia-smi fails)"
else
  # memcheck over every op; racecheck and synccheck (slower) over the kernels
  # that use shared memory and barriers.
  for tool in memcheck racecheck synccheck; do
    filter='*'
    [[ "$tool" != memcheck ]] && filter='*Attention*:*LayerNorm*:*RmsNorm*:*OutputLayer*:*SumSquares*'
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

# ---- benchmarks ----
say ""
say "== op_bench (CudaBackend per-op throughput) =="
if timeout "$(budget 200)" "$op_bench" >"$LOGDIR/op_bench.log" 2>&1; then
  grep -E '^op_bench:|^SKIPPED|^  - |would measure' "$LOGDIR/op_bench.log" | tee -a "$SUMMARY"
else
  failed=1
  say "op_bench FAILED (exit $?); last lines:"
  tail -20 "$LOGDIR/op_bench.log" | tee -a "$SUMMARY"
fi

# ---- PyTorch baseline ----
say ""
say "== PyTorch DPO step (1B Llama shape, eager, bf16 autocast) =="
torch_plan="would measure: tokens/s and peak memory of a DPO step of a 1B Llama-shaped model (d=2048, 16 layers, 32 heads / 8 KV, V=128256), 4 pairs of prompt 512 + response 512, TRL's sigmoid loss, eager PyTorch bf16"
if ! torch_err=$(python3 -c 'import torch' 2>&1); then
  say "SKIPPED: torch not importable ($(echo "$torch_err" | tail -1))"
  say "  $torch_plan"
elif ! python3 -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
  say "SKIPPED: no GPU (torch.cuda.is_available() is False)"
  say "  $torch_plan"
else
  PYTHONUNBUFFERED=1 timeout "$(budget 150)" python3 tests/gpu/torch_dpo_step.py \
    >"$LOGDIR/torch.log" 2>&1
  rc=$?
  if ((rc == 0)); then
    grep -E '^torch_dpo_step:|^SKIPPED' "$LOGDIR/torch.log" | tee -a "$SUMMARY"
  else
    failed=1
    say "torch_dpo_step FAILED (exit $rc); last lines:"
    tail -15 "$LOGDIR/torch.log" | tee -a "$SUMMARY"
  fi
fi

# ---- end-to-end prefopt DPO step ----
say ""
say "== prefopt DPO step on the GPU =="
if ! grep -Eq '^\s*(optional\s+)?\w+\s+device\s*=' proto/config.proto; then
  say "SKIPPED: prefopt has no \`device\` option yet (TrainConfig in proto/config.proto has no device field), so the training loop cannot select the CUDA backend; the end-to-end GPU DPO step is not measured"
elif [[ ! -f tests/gpu/dpo_1b.textproto ]]; then
  say "SKIPPED: the \`device\` option exists, but tests/gpu/dpo_1b.textproto (a 1B Llama DPO config matching torch_dpo_step.py) does not"
elif [[ "$mode" == prebuilt ]]; then
  say "SKIPPED: prefopt is not in the prebuilt bundle; run this script where Bazel is"
else
  if timeout "$(budget 240)" bazel --output_base="$OUTPUT_BASE" build --symlink_prefix=/ //launch:prefopt >"$LOGDIR/prefopt_build.log" 2>&1; then
    run_dir="$(mktemp -d)"
    e2e_start=$SECONDS
    if timeout "$(budget 200)" "$bin_dir/launch/prefopt" train \
        --config=tests/gpu/dpo_1b.textproto --set=device=cuda \
        --run_dir="$run_dir" >"$LOGDIR/prefopt.log" 2>&1; then
      say "prefopt train (device=cuda) ok in $((SECONDS - e2e_start)) s; last metrics:"
      tail -3 "$run_dir/metrics.jsonl" 2>/dev/null | tee -a "$SUMMARY"
    else
      failed=1
      say "prefopt train (device=cuda) FAILED; last lines:"
      tail -15 "$LOGDIR/prefopt.log" | tee -a "$SUMMARY"
    fi
  else
    failed=1
    say "prefopt build FAILED; last lines:"
    grep -v 'linux-sandbox' "$LOGDIR/prefopt_build.log" | tail -15 | tee -a "$SUMMARY"
  fi
fi

say ""
say "== done in $((SECONDS - START_S)) s; $([[ $failed == 0 ]] && echo 'nothing failed' || echo 'FAILURES above') =="
say "summary: $SUMMARY"
exit "$failed"
