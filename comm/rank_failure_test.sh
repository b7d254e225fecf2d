#!/bin/bash
# A rank that dies or errors must end the whole job, non-zero and within a
# bounded time, while rank 0 waits for it in an all-reduce (see
# rank_failure_worker.cc for the modes).
source comm/mpi_env.sh

readonly LIMIT_MS=30000
failures=0

# expect MODE WANT_RC PATTERN: the job exits with WANT_RC within LIMIT_MS and
# its output matches PATTERN.
expect() {
  local mode="$1" want_rc="$2" pattern="$3"
  local log="${TEST_TMPDIR}/${mode}.log"
  run_mpi 2 45 comm/rank_failure_worker "${mode}" >"${log}" 2>&1
  local rc=$?
  local verdict=PASS
  if [[ ${rc} -ne ${want_rc} ]]; then
    verdict="FAIL (exit status ${rc}, want ${want_rc}; 124 means it hung)"
  elif [[ ${ELAPSED_MS} -ge ${LIMIT_MS} ]]; then
    verdict="FAIL (took ${ELAPSED_MS} ms, limit ${LIMIT_MS} ms)"
  elif ! grep -qE "${pattern}" "${log}"; then
    verdict="FAIL (output lacks /${pattern}/)"
  elif grep -q "should not get here" "${log}"; then
    verdict="FAIL (a rank finished)"
  fi
  echo "${mode}: exit status ${rc} after ${ELAPSED_MS} ms: ${verdict}"
  if [[ ${verdict} != PASS ]]; then
    sed 's/^/    /' "${log}"
    failures=$((failures + 1))
  fi
}

expect exit 3 "rank 0 waits in AllReduceSum"
expect wait 3 "rank 0 waits in PendingReduce::Wait"
expect sigkill 137 "rank 0 waits in AllReduceSum"
expect abort_all 1 "fatal error, aborting all ranks: INTERNAL: simulated data error"
expect mismatch 1 "config hash differs across ranks: 0x000000000000006f on rank 0; 0x00000000000000de on rank 1"

if [[ ${failures} -ne 0 ]]; then
  echo "${failures} scenario(s) failed"
  exit 1
fi
echo PASS
