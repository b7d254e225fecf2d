#!/usr/bin/env bash
# A rank of `mpirun -np 2 prefopt train` killed with SIGKILL mid-run must bring
# the whole job down with a non-zero status within a bounded time, not leave
# the surviving rank waiting in a collective.
set -uo pipefail

prefopt="$PWD/$1"
source "$PWD/comm/mpi_env.sh"
fixtures="$PWD/tests/fixtures/gpt2"
tmp="${TEST_TMPDIR:-$(mktemp -d)}"

cat >"$tmp/long.textproto" <<CONF
model { architecture: GPT2 vocab_size: 101 n_positions: 64 n_embd: 64 n_layer: 2 n_head: 4 }
data { train_files: "$fixtures/pairs.jsonl" max_length: 64 }
objective { dpo { beta: 0.1 } }
optimizer { lr: 1e-4 }
batch { micro_batch_size: 1 global_batch_size: 2 }
max_steps: 1000000
run_dir: "$tmp/run"
CONF

run_mpi 2 60 "$prefopt" train --config="$tmp/long.textproto" >"$tmp/job.log" 2>&1 &
job=$!
# Wait until training is under way (metrics are being written).
for _ in $(seq 1 100); do
  [[ -s "$tmp/run/metrics.jsonl" ]] && break
  sleep 0.2
done
[[ -s "$tmp/run/metrics.jsonl" ]] || { echo "FAIL: training never started"; cat "$tmp/job.log"; exit 1; }

victim=$(pgrep -f -- "--config=$tmp/long.textproto" | sort -n | tail -1)
[[ -n "$victim" ]] || { echo "FAIL: no rank process found"; exit 1; }
start=$(date +%s%N)
kill -9 "$victim"
wait "$job"
rc=$?
elapsed_ms=$((($(date +%s%N) - start) / 1000000))
if [[ $rc -eq 0 || $rc -eq 124 ]]; then
  echo "FAIL: job exit status $rc after killing rank pid $victim (124 = hung until the timeout)"
  cat "$tmp/job.log"
  exit 1
fi
if ((elapsed_ms > 30000)); then
  echo "FAIL: the job took ${elapsed_ms} ms to end"
  exit 1
fi
echo "ok: killed one rank; the job ended with status $rc after ${elapsed_ms} ms"
