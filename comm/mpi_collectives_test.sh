#!/bin/bash
# Runs collectives_check (every collective against local values) on 2 MPI
# ranks.
source comm/mpi_env.sh

run_mpi 2 50 comm/collectives_check
rc=$?
echo "mpirun exited with ${rc} after ${ELAPSED_MS} ms"
if [[ ${rc} -eq 124 ]]; then
  echo "FAIL: the ranks hung (a rank skipped a collective?)"
fi
exit "${rc}"
