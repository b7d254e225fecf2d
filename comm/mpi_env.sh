# Sourced by the multi-process tests: Open MPI 4.1 settings that let mpirun
# start ranks on this machine inside Bazel's test sandbox, offline and as
# root, and a `run_mpi NP TIMEOUT_S PROGRAM [ARGS...]` helper.
#
# Why each setting (on this Debian 12 machine only the first two are strictly
# needed; the others keep the tests working in stricter containers and on
# machines with network hardware):
# - OMPI_ALLOW_RUN_AS_ROOT(_CONFIRM): mpirun refuses to run as root otherwise
#   (containers and CI run as root).
# - rmaps_base_oversubscribe: more ranks than cores is fine for tests (CI
#   machines may have a single core).
# - btl self,vader and pml ob1: shared memory only, so no network interface
#   is probed or needed, and no InfiniBand/UCX/OFI hardware probing (slow and
#   noisy warnings in containers).
# - btl_vader_single_copy_mechanism none: CMA (process_vm_readv) needs ptrace
#   permission between ranks, which container security profiles often deny.
# - plm_rsh_agent false: every rank is local; mpirun must not look for ssh,
#   which a minimal container may lack.
# - hwloc_base_binding_policy none, mpi_yield_when_idle: do not pin ranks to
#   cores or spin at full speed on a machine shared with other work.
# - TMPDIR: a private directory for Open MPI's session files, removed on exit,
#   so that the jobs the failure tests kill leave nothing behind in /tmp.
# - GTEST_OUTPUT, XML_OUTPUT_FILE, TEST_PREMATURE_EXIT_FILE: Bazel asks the
#   test for these files, and every rank would write (or delete) the same one.
set -u

MPIRUN=/usr/bin/mpirun
if [[ ! -x "${MPIRUN}" ]]; then
  echo "FAIL: ${MPIRUN} not found: install openmpi-bin (setup.sh does)" >&2
  exit 1
fi

export OMPI_ALLOW_RUN_AS_ROOT=1
export OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMPI_MCA_rmaps_base_oversubscribe=1
export OMPI_MCA_btl=self,vader
export OMPI_MCA_pml=ob1
export OMPI_MCA_btl_vader_single_copy_mechanism=none
export OMPI_MCA_plm_rsh_agent=false
export OMPI_MCA_hwloc_base_binding_policy=none
export OMPI_MCA_mpi_yield_when_idle=1
unset GTEST_OUTPUT XML_OUTPUT_FILE TEST_PREMATURE_EXIT_FILE

MPI_TMPDIR="$(mktemp -d /tmp/prefopt-mpi.XXXXXX)"
export TMPDIR="${MPI_TMPDIR}"
trap 'rm -rf "${MPI_TMPDIR}"' EXIT

# run_mpi NP TIMEOUT_S PROGRAM [ARGS...]: runs PROGRAM on NP ranks, killing
# the job after TIMEOUT_S seconds (exit status 124 then). Sets ELAPSED_MS.
run_mpi() {
  local np="$1" timeout_s="$2"
  shift 2
  local start end rc
  start=$(date +%s%N)
  timeout -k 5 "${timeout_s}" "${MPIRUN}" -np "${np}" --tag-output "$@"
  rc=$?
  end=$(date +%s%N)
  ELAPSED_MS=$(((end - start) / 1000000))
  return "${rc}"
}
