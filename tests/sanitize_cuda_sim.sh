#!/usr/bin/env bash
# Runs the CUDA simulation's tests (the simulation itself and every CUDA
# backend op) under AddressSanitizer+UndefinedBehaviorSanitizer and under
# ThreadSanitizer (.bazelrc's --config=asan and --config=tsan). Each
# configuration builds its own copy of the simulated targets. ThreadSanitizer
# is slow here (every CUDA thread is a TSan thread, and every barrier
# synchronizes all of a block's): cuda_backend_sim_test takes about 10
# minutes under it on 2 cores, against 20 s plain. Exit status 0 when both
# configurations are clean.
set -uo pipefail
cd "$(dirname "$0")/.."
targets=(//kernels/cuda/sim:sim_test //kernels/cuda:cuda_backend_sim_test)
status=0
for config in asan tsan; do
  echo "== --config=$config: ${targets[*]}"
  start=$SECONDS
  if bazel test --config="$config" --test_timeout=2400 "${targets[@]}"; then
    echo "== --config=$config: clean ($((SECONDS - start)) s)"
  else
    echo "== --config=$config: FAILED ($((SECONDS - start)) s)"
    status=1
  fi
done
exit "$status"
