#!/bin/bash
# The all-reduce benchmark runs on 2 MPI ranks, prints its table and finds
# every sum right.
source comm/mpi_env.sh

log="${TEST_TMPDIR}/bench.log"
run_mpi 2 50 comm/allreduce_bench --max_bytes=1M --iters=3 --warmup=1 \
  >"${log}" 2>&1
rc=$?
cat "${log}"
[[ ${rc} -eq 0 ]] || { echo "FAIL: allreduce_bench exited with ${rc}"; exit 1; }
rows=$(grep -cE '^\[1,0\]<stdout>: +[0-9]+ +[0-9]+ +float +sum ' "${log}")
[[ ${rows} -eq 18 ]] || { echo "FAIL: ${rows} size rows, want 18 (8 B..1 MB)"; exit 1; }
wrong=$(grep -E '^\[1,0\]<stdout>: +[0-9]+ +[0-9]+ +float +sum ' "${log}" |
  awk '$NF != 0' | wc -l)
[[ ${wrong} -eq 0 ]] || { echo "FAIL: ${wrong} sizes with wrong sums"; exit 1; }
grep -q 'backend mpi, 2 ranks' "${log}" || { echo "FAIL: not the MPI backend"; exit 1; }
echo PASS
