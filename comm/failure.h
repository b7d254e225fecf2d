// Keeping a multi-rank job from going wrong silently or hanging:
// - CheckSameAcrossRanks catches ranks that disagree on what they train (a
//   config or data fingerprint) before they exchange a single gradient.
// - AbortAll ends every rank when one rank hits an error, instead of leaving
//   the others blocked in a collective that rank will never join.
// A rank that dies (crash, OOM kill, _exit) is handled by the launcher:
// mpirun aborts the whole job when a rank exits non-zero or by a signal
// without finalizing MPI (comm/rank_failure_test.sh checks this), and srun
// does the same with --kill-on-bad-exit=1 (set in launch/slurm/*.sbatch).
#ifndef PREFOPT_COMM_FAILURE_H_
#define PREFOPT_COMM_FAILURE_H_

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "comm/communicator.h"

namespace prefopt::comm {

// Collective: every rank passes its own `fingerprint` of `what` (e.g. "config
// hash"). OK when all ranks passed the same value; otherwise every rank gets
// the same FailedPrecondition error naming `what`, each distinct value and the
// ranks that hold it, e.g. "config hash differs across ranks:
// 0x00000000000004d2 on ranks 0,2-3; 0x000000000000162e on rank 1".
absl::Status CheckSameAcrossRanks(Communicator& comm, uint64_t fingerprint,
                                  const std::string& what);

// Prints "prefopt rank R/N: fatal error, aborting all ranks: <status>" to
// stderr and ends every rank of the job (MPI_Abort), with exit code 1.
[[noreturn]] void AbortAll(Communicator& comm, const absl::Status& status);

}  // namespace prefopt::comm

#endif  // PREFOPT_COMM_FAILURE_H_
