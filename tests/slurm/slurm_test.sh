#!/usr/bin/env bash
# A real Slurm job on this machine: a one-node Slurm 22.05 cluster (slurmctld
# + slurmd, authenticated by munge) runs launch/slurm/prefopt_cpu.sbatch with
# 2 tasks, and its metrics.jsonl must match `mpirun -np 2` of the same config
# and one rank with the doubled batch, step for step, within 1e-4 relative.
#
#   bazel test //tests/slurm:slurm_test        (as root; see BUILD for tags)
#
# Needs root: it installs Debian's slurm-wlm and munge when missing (apt-get,
# from Debian's archive only), creates /etc/munge/munge.key when absent, and
# runs munged, slurmctld and slurmd. Everything else lives in a private
# scratch directory under /tmp that is removed at the end:
# - munged runs as the munge user with its own socket, pid, log and seed
#   files there (so it neither needs nor disturbs a system munged);
# - slurm.conf, state, spool, logs and pid files are there, with ports picked
#   free at start, so a system Slurm or a concurrent run of this test is not
#   affected.
# The daemons are stopped by their pid files on every exit path (trap).
# Every wait is bounded; the failure message says which step failed and
# prints the logs that explain it.
set -uo pipefail

prefopt="$PWD/$1"
template="$PWD/launch/slurm/prefopt_cpu.sbatch"
# Bazel's test PATH lacks the sbin directories: munged, slurmctld, slurmd and
# the helpers dpkg's maintainer scripts call (ldconfig, adduser) live there.
export PATH="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# One compute thread per rank everywhere: the template sets OMP_NUM_THREADS
# from --cpus-per-task=1, and the reference runs use the same.
export OMP_NUM_THREADS=1

t0=$(date +%s)
log() { echo "[slurm_test +$(($(date +%s) - t0))s] $*"; }
fail() {
  echo "FAIL: $*" >&2
  exit 1
}

[[ $(id -u) -eq 0 ]] ||
  fail "must run as root: it installs slurm-wlm/munge and starts munged, slurmctld and slurmd"
[[ -x "${prefopt}" ]] || fail "prefopt binary not found at ${prefopt}"

# ---------------------------------------------------------------------------
# 1. Packages: slurm-wlm and munge from Debian, only when missing.
# ---------------------------------------------------------------------------
missing=()
for p in slurm-wlm munge; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" ||
    missing+=("$p")
done
if ((${#missing[@]})); then
  log "installing ${missing[*]} with apt-get"
  export DEBIAN_FRONTEND=noninteractive
  apt_log="$(mktemp /tmp/prefopt-slurm-apt.XXXXXX)"
  if ! timeout 90 apt-get -o DPkg::Lock::Timeout=60 update -qq >"${apt_log}" 2>&1; then
    cat "${apt_log}" >&2
    rm -f "${apt_log}"
    fail "apt-get update failed or took over 90 s (needs access to Debian's archive)"
  fi
  # No recommends: slurm-wlm-plugins would pull in MySQL, HDF5, RRD...;
  # slurm-wlm-basic-plugins (a dependency) has everything used here,
  # including mpi/pmix.
  if ! timeout 180 apt-get -o DPkg::Lock::Timeout=60 install -y -qq \
    --no-install-recommends "${missing[@]}" >"${apt_log}" 2>&1; then
    cat "${apt_log}" >&2
    rm -f "${apt_log}"
    fail "apt-get install ${missing[*]} failed or took over 180 s"
  fi
  rm -f "${apt_log}"
fi
for b in munged munge unmunge slurmctld slurmd sbatch srun sinfo squeue scancel; do
  command -v "$b" >/dev/null || fail "$b not found after installing slurm-wlm and munge"
done
id munge >/dev/null 2>&1 || fail "no munge user (the munge package creates it)"

# ---------------------------------------------------------------------------
# 2. Scratch directory and cleanup on every exit path.
# ---------------------------------------------------------------------------
# Open MPI settings for the mpirun reference run (also exported to the Slurm
# job by sbatch, where they keep Open MPI on shared memory). mpi_env.sh sets
# an EXIT trap that removes its TMPDIR; the trap below replaces it and does
# that too.
source "$PWD/comm/mpi_env.sh"
# Under /tmp, not TEST_TMPDIR: the munge user must reach its socket (TEST_TMPDIR
# is under /root, mode 700), and Unix socket paths that slurmd and its PMIx
# plugin create under the spool directory must stay under 108 bytes.
scratch="$(mktemp -d /tmp/prefopt-slurm.XXXXXX)" || fail "mktemp failed"
chmod 755 "${scratch}"
mkdir -p "${scratch}"/{munge,state,spool,log,runs,tmp}

# Long commands run in the background while this shell waits for them: bash
# runs a trap only between commands, so a SIGTERM from Bazel's timeout would
# otherwise wait for `sbatch --wait` itself to time out. Each is started by
# `timeout`, which cleanup signals once (it passes SIGTERM on to its command;
# mpirun, signalled twice, would exit without ending its ranks).
# run_bg OUT ERR COMMAND...: redirects COMMAND, not this shell (a trap that
# runs while waiting must still reach the test log).
bg_pid=""
run_bg() {
  local out="$1" err="$2"
  shift 2
  if [[ "${out}" == "${err}" ]]; then
    "$@" >"${out}" 2>&1 &
  else
    "$@" >"${out}" 2>"${err}" &
  fi
  bg_pid=$!
  wait "${bg_pid}"
  local rc=$?
  bg_pid=""
  return "${rc}"
}
# Whether PID runs (a zombie does not: daemons are reparented to PID 1,
# which in some containers reaps them late). Reads /proc: no procps needed.
running() {
  local stat
  stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 1
  stat="${stat##*) }"
  [[ "${stat:0:1}" != Z ]]
}
# The direct children of PID, from /proc.
children() {
  local f stat ppid
  for f in /proc/[0-9]*/stat; do
    stat="$(cat "$f" 2>/dev/null)" || continue
    stat="${stat##*) }"
    read -r _ ppid _ <<<"${stat}"
    [[ "${ppid}" == "$1" ]] && { f="${f#/proc/}"; echo "${f%/stat}"; }
  done
}
# stop_bg PID: SIGTERM to the `timeout` that PID is or (run_mpi's subshell)
# has as its child.
stop_bg() {
  local pid="$1"
  [[ "$(cat "/proc/${pid}/comm" 2>/dev/null)" == timeout ]] || pid="$(children "${pid}")"
  [[ -n "${pid}" ]] && kill -TERM ${pid} 2>/dev/null
}
stop_pidfile() { # stop_pidfile NAME FILE: SIGTERM, wait up to 10 s, SIGKILL
  local name="$1" file="$2" pid
  [[ -s "${file}" ]] || return 0
  pid="$(cat "${file}")"
  [[ "${pid}" =~ ^[0-9]+$ ]] || return 0
  running "${pid}" || return 0
  kill -TERM "${pid}" 2>/dev/null
  for _ in $(seq 100); do
    running "${pid}" || return 0
    sleep 0.1
  done
  echo "slurm_test: ${name} (pid ${pid}) ignored SIGTERM for 10 s; sending SIGKILL" >&2
  kill -KILL "${pid}" 2>/dev/null
}
show_logs() {
  local f
  for f in "${scratch}"/log/*.log "${scratch}"/munge/munged.log "${scratch}"/job-*.out; do
    [[ -s "$f" ]] || continue
    echo "----- ${f#"${scratch}"/} (last 40 lines) -----" >&2
    tail -n 40 "$f" >&2
  done
  # Keep everything for inspection when Bazel offers a place for it.
  if [[ -n "${TEST_UNDECLARED_OUTPUTS_DIR:-}" ]]; then
    cp -r "${scratch}/log" "${scratch}"/job-*.out "${scratch}/slurm.conf" \
      "${TEST_UNDECLARED_OUTPUTS_DIR}/" 2>/dev/null
  fi
}
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  [[ -n "${bg_pid}" ]] && stop_bg "${bg_pid}"
  ((rc != 0)) && show_logs
  # Jobs still queued or running (this cluster is private, so every job is
  # ours): cancel them, so that slurmd ends their tasks (SIGKILL after
  # KillWait=5 s) before it is stopped itself; tasks would outlive it.
  local jobs
  if [[ -s "${scratch}/slurmctld.pid" ]]; then
    jobs="$(timeout 5 squeue -h -o %A 2>/dev/null)"
    if [[ -n "${jobs}" ]]; then
      log "cancelling job(s) ${jobs//$'\n'/ }"
      timeout 5 scancel ${jobs} 2>/dev/null
      for _ in $(seq 24); do
        [[ -z "$(timeout 5 squeue -h -o %A 2>/dev/null)" ]] && break
        sleep 0.5
      done
    fi
  fi
  stop_pidfile slurmd "${scratch}/slurmd.pid"
  stop_pidfile slurmctld "${scratch}/slurmctld.pid"
  stop_pidfile munged "${scratch}/munge/munged.pid"
  rm -rf "${scratch}" "${MPI_TMPDIR}"
  exit "${rc}"
}
trap cleanup EXIT
trap 'echo "slurm_test: interrupted" >&2; exit 130' INT
trap 'echo "slurm_test: terminated (timeout?)" >&2; exit 143' TERM

# ---------------------------------------------------------------------------
# 3. munge: the key (once per machine) and a private munged.
# ---------------------------------------------------------------------------
key=/etc/munge/munge.key
if [[ ! -s "${key}" ]]; then
  log "creating ${key}"
  install -d -o munge -g munge -m 700 /etc/munge
  tmp_key="$(mktemp /etc/munge/.munge.key.XXXXXX)" || fail "cannot write in /etc/munge"
  dd if=/dev/urandom of="${tmp_key}" bs=1024 count=1 status=none
  chown munge:munge "${tmp_key}"
  chmod 400 "${tmp_key}"
  # ln fails when another process created the key meanwhile: keep that one.
  ln "${tmp_key}" "${key}" 2>/dev/null
  rm -f "${tmp_key}"
fi
# munged insists that clients can reach its socket's directory (0755) and
# that nobody but munge can write there.
chown munge:munge "${scratch}/munge"
chmod 755 "${scratch}/munge"
munge_socket="${scratch}/munge/munge.socket"
timeout 20 runuser -u munge -- munged --key-file="${key}" \
  --socket="${munge_socket}" --pid-file="${scratch}/munge/munged.pid" \
  --log-file="${scratch}/munge/munged.log" --seed-file="${scratch}/munge/munged.seed" ||
  fail "munged did not start (see munged.log below)"
for _ in $(seq 100); do
  [[ -S "${munge_socket}" ]] && break
  sleep 0.1
done
timeout 10 munge -S "${munge_socket}" -n 2>&1 | timeout 10 unmunge -S "${munge_socket}" >/dev/null ||
  fail "munge credentials do not round-trip through munged at ${munge_socket}"
log "munged up"

# ---------------------------------------------------------------------------
# 4. slurm.conf, slurmctld, slurmd.
# ---------------------------------------------------------------------------
node="$(hostname -s)"
# Two free TCP ports below the usual ephemeral range (32768+).
read -r ctld_port slurmd_port < <(python3 - <<'PY'
import random, socket
ports = []
while len(ports) < 2:
    p = random.randrange(20000, 30000)
    if p in ports:
        continue
    with socket.socket() as s:
        try:
            s.bind(("", p))
        except OSError:
            continue
    ports.append(p)
print(*ports)
PY
)
[[ -n "${slurmd_port:-}" ]] || fail "could not pick two free TCP ports"

conf="${scratch}/slurm.conf"
cat >"${conf}" <<CONF
# One node, one partition, everything in ${scratch}.
ClusterName=prefopt-test
SlurmctldHost=${node}(127.0.0.1)
SlurmctldPort=${ctld_port}
SlurmdPort=${slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=${munge_socket}
StateSaveLocation=${scratch}/state
SlurmdSpoolDir=${scratch}/spool
SlurmctldPidFile=${scratch}/slurmctld.pid
SlurmdPidFile=${scratch}/slurmd.pid
SlurmctldLogFile=${scratch}/log/slurmctld.log
SlurmdLogFile=${scratch}/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
MailProg=/bin/true
# Node-local temporary files, among them the PMIx plugin's
# spmix_appdir_<uid>_<job>.<step> directories: every run of this test starts
# at job 1, and a stale /tmp/spmix_appdir_0_1.0 (left by a killed step) would
# make the step fail to launch.
TmpFS=${scratch}/tmp
# No cgroups: plain process tracking, no task binding.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/builtin
ReturnToService=2
# Use the node's configured CPUs even on a machine with fewer cores (CI).
SlurmdParameters=config_overrides
SlurmdTimeout=60
KillWait=5
MinJobAge=300
NodeName=${node} NodeAddr=127.0.0.1 CPUs=2 State=UNKNOWN
PartitionName=test Nodes=${node} Default=YES MaxTime=INFINITE State=UP
CONF
export SLURM_CONF="${conf}"

# The daemons get a clean environment (not this test's OMPI_*/TEST_* ones).
daemon_env=(env -i "PATH=${PATH}" "SLURM_CONF=${conf}" "TMPDIR=${scratch}/tmp")
timeout 30 "${daemon_env[@]}" slurmctld -c ||
  fail "slurmctld did not start (see slurmctld.log below)"
timeout 30 "${daemon_env[@]}" slurmd -N "${node}" ||
  fail "slurmd did not start (see slurmd.log below)"

state=""
for _ in $(seq 120); do
  state="$(timeout 5 sinfo -h -N -n "${node}" -o %t 2>/dev/null)"
  [[ "${state}" == "idle" ]] && break
  sleep 0.5
done
[[ "${state}" == "idle" ]] ||
  fail "node ${node} is '${state:-unknown}' after 60 s, not idle: $(timeout 5 scontrol show node "${node}" 2>&1)"
log "slurmctld (port ${ctld_port}) and slurmd (port ${slurmd_port}) up; node ${node} idle"

# ---------------------------------------------------------------------------
# 5. The Slurm job, and the same training with mpirun and with one rank.
# ---------------------------------------------------------------------------
# The shape of tests/data_parallel_test.sh's run: 4 pairs per step; one rank
# does them in 2 micro-batches of 2, each of 2 ranks in 2 micro-batches of 1.
# Its model (tests/fixtures/gpt2: vocab 101, n_embd 32, 2 layers) is built
# here from scratch with the same sizes, and 24 random pre-tokenized pairs are
# generated, because //tests:gpt2_fixtures is private to //tests.
python3 - "${scratch}/pairs.jsonl" <<'PY' || fail "could not write the pairs"
import json, random, sys
rng = random.Random(5)
with open(sys.argv[1], "w") as f:
    for _ in range(24):
        ids = lambda lo, hi: [rng.randrange(100) for _ in range(rng.randint(lo, hi))]
        f.write(json.dumps({"prompt_ids": ids(3, 20), "chosen_ids": ids(2, 20),
                            "rejected_ids": ids(2, 20)}) + "\n")
PY
cat >"${scratch}/dp.textproto" <<CONF
model { architecture: GPT2 vocab_size: 101 n_positions: 64 n_embd: 32 n_layer: 2 n_head: 4 }
data { train_files: "${scratch}/pairs.jsonl" max_length: 64 shuffle: true }
objective { dpo { beta: 0.1 } }
optimizer { lr: 1e-3 weight_decay: 0.01 max_grad_norm: 1.0 }
batch { micro_batch_size: 2 global_batch_size: 4 }
max_steps: 6
seed: 5
CONF

log "sbatch --wait launch/slurm/prefopt_cpu.sbatch (2 tasks)"
run_bg "${scratch}/sbatch.out" "${scratch}/sbatch.err" env CONFIG="${scratch}/dp.textproto" RUN_DIR="${scratch}/runs/slurm" \
  PREFOPT="${prefopt}" timeout 120 sbatch --parsable --wait --job-name=prefopt-slurm-test \
  --chdir="${scratch}" --output="${scratch}/job-%j.out" \
  "${template}" --set=batch.micro_batch_size=1
rc=$?
job_id="$(head -n 1 "${scratch}/sbatch.out" | cut -d';' -f1)"
if ((rc != 0)); then
  cat "${scratch}/sbatch.err" >&2
  ((rc == 124)) && fail "job ${job_id:-?} did not finish within 120 s"
  fail "Slurm job ${job_id:-?} failed (sbatch --wait exit status ${rc}; job output below)"
fi
job_out="${scratch}/job-${job_id}.out"
grep -q "data-parallel: rank 0 of 2 .*launched by srun" "${job_out}" ||
  fail "job ${job_id} did not train as 2 ranks under srun: $(cat "${job_out}")"
log "Slurm job ${job_id} done ($(timeout 10 scontrol show job "${job_id}" 2>/dev/null |
  grep -o 'RunTime=[^ ]*')): $(grep 'data-parallel:' "${job_out}")"

log "mpirun -np 2, same config"
run_bg "${scratch}/mpirun.log" "${scratch}/mpirun.log" \
  run_mpi 2 90 "${prefopt}" train --config="${scratch}/dp.textproto" \
  --run_dir="${scratch}/runs/mpirun" --set=batch.micro_batch_size=1 ||
  { cat "${scratch}/mpirun.log" >&2; fail "mpirun -np 2 run failed (or took over 90 s)"; }

log "1 rank, 4 pairs per step"
run_bg "${scratch}/one.log" "${scratch}/one.log" \
  timeout 90 "${prefopt}" train --config="${scratch}/dp.textproto" \
  --run_dir="${scratch}/runs/one" ||
  { cat "${scratch}/one.log" >&2; fail "single-rank run failed (or took over 90 s)"; }

python3 - "${scratch}/runs" <<'PY' || fail "metrics differ (see above)"
import json, sys
root = sys.argv[1]
runs = {}
for name in ("slurm", "mpirun", "one"):
    with open(f"{root}/{name}/metrics.jsonl") as f:
        runs[name] = [json.loads(l) for l in f if l.strip()]
    assert len(runs[name]) == 6, f"{name}: {len(runs[name])} steps logged, want 6"
ok = True
for other in ("mpirun", "one"):
    worst = 0.0
    for a, b in zip(runs["slurm"], runs[other]):
        for key in ("loss", "grad_norm"):
            x, y = a[key], b[key]
            err = abs(x - y) / max(abs(y), 1e-6)
            worst = max(worst, err)
            if err >= 1e-4:
                ok = False
                print(f"FAIL: step {a['step']} {key}: srun {x}, {other} {y} "
                      f"(relative difference {err:.2e})")
    print(f"slurm vs {other}: 6 steps, worst relative difference in "
          f"loss/grad_norm {worst:.2e}")
sys.exit(0 if ok else 1)
PY
log "ok: sbatch (srun --mpi=pmix, 2 tasks) == mpirun -np 2 == 1 rank with the doubled batch"
