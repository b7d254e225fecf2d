#!/bin/bash
# Runs each sbatch template as Slurm would run its batch script, with a
# stand-in `srun` first on PATH that records its command line, then waits for
# a signal. The test sends SIGUSR1 to the batch shell (as --signal=B:USR1
# does) and checks that srun received it and that the script exits with
# srun's status.
set -u

templates="${PWD}/launch/slurm"
work="${TEST_TMPDIR}/sbatch"
mkdir -p "${work}/bin"
cat >"${work}/bin/srun" <<'SRUN'
#!/bin/bash
echo "srun $*" >"${FAKE_SRUN_DIR}/cmdline"
trap 'echo USR1 >"${FAKE_SRUN_DIR}/signal"; exit 42' USR1
touch "${FAKE_SRUN_DIR}/ready"
while true; do sleep 0.05; done
SRUN
chmod +x "${work}/bin/srun"
# The template's default binary path, relative to the submit directory.
mkdir -p "${work}/submit/bazel-bin/launch"
printf '#!/bin/sh\n' >"${work}/submit/bazel-bin/launch/prefopt"
chmod +x "${work}/submit/bazel-bin/launch/prefopt"

failures=0
fail() {
  echo "FAIL: $*"
  failures=$((failures + 1))
}

# check TEMPLATE CPUS
check() {
  local template="${templates}/$1" cpus="$2"
  local dir="${work}/$1"
  mkdir -p "${dir}"
  (
    cd "${work}/submit" &&
      PATH="${work}/bin:${PATH}" FAKE_SRUN_DIR="${dir}" \
        CONFIG=runs/dpo.textproto SLURM_JOB_NAME=prefopt SLURM_JOB_ID=1234 \
        SLURM_CPUS_PER_TASK="${cpus}" \
        exec bash "${template}" --set=optimizer.lr=5e-7
  ) >"${dir}/out" 2>&1 &
  local pid=$!
  for _ in $(seq 100); do
    [[ -e "${dir}/ready" ]] && break
    sleep 0.05
  done
  [[ -e "${dir}/ready" ]] || fail "$1: srun never started: $(cat "${dir}/out")"
  kill -USR1 "${pid}"
  wait "${pid}"
  local rc=$?

  local want="srun --mpi=pmix --kill-on-bad-exit=1 --cpus-per-task=${cpus} "
  want+="${work}/submit/bazel-bin/launch/prefopt train "
  want+="--config=runs/dpo.textproto --run_dir=runs/prefopt-1234 --resume=latest "
  want+="--set=optimizer.lr=5e-7"
  [[ "$(cat "${dir}/cmdline")" == "${want}" ]] ||
    fail "$1: srun command line is '$(cat "${dir}/cmdline")', want '${want}'"
  [[ -e "${dir}/signal" ]] || fail "$1: SIGUSR1 was not forwarded to srun"
  [[ ${rc} -eq 42 ]] || fail "$1: exit status ${rc}, want srun's 42"
  grep -q "SIGUSR1: asking every rank to checkpoint" "${dir}/out" ||
    fail "$1: no notice of the signal in the job output"
  grep -q "^#SBATCH --signal=B:USR1@" "${template}" ||
    fail "$1: no #SBATCH --signal=B:USR1@<seconds>"
  echo "$1: exit status ${rc}, srun saw SIGUSR1"
}

check prefopt.sbatch 8
check prefopt_cpu.sbatch 1

# Without CONFIG the script stops before starting anything.
if (cd "${work}/submit" && PATH="${work}/bin:${PATH}" \
  FAKE_SRUN_DIR="${work}" SLURM_JOB_NAME=j SLURM_JOB_ID=1 \
  SLURM_CPUS_PER_TASK=1 bash "${templates}/prefopt_cpu.sbatch" \
  >"${work}/noconfig.out" 2>&1); then
  fail "ran without CONFIG"
fi
grep -q "set CONFIG" "${work}/noconfig.out" || fail "no hint about CONFIG"

[[ ${failures} -eq 0 ]] || exit 1
echo PASS
