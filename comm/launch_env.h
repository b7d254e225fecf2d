// Where this process sits in a data-parallel job, read from the variables its
// launcher exported: Open MPI's mpirun, Slurm's srun (with or without PMIx), or
// nothing (a plain single-process run).
#ifndef PREFOPT_COMM_LAUNCH_ENV_H_
#define PREFOPT_COMM_LAUNCH_ENV_H_

#include <map>
#include <string>

#include "absl/status/statusor.h"

namespace prefopt::comm {

struct LaunchEnv {
  int rank = 0;                   // global rank, 0 .. world_size-1
  int world_size = 1;             // number of ranks in the job
  int local_rank = 0;             // rank among the ranks on this node
  int local_world_size = 1;       // number of ranks on this node
  std::string launcher = "none";  // "mpirun", "srun" or "none"
};

// Reads the launch variables from `env` (name → value):
// - mpirun: OMPI_COMM_WORLD_RANK, _SIZE, _LOCAL_RANK, _LOCAL_SIZE (all four
//   required). They take precedence over Slurm variables, which an mpirun
//   started inside an sbatch script inherits from the batch step.
// - srun: SLURM_PROCID, SLURM_LOCALID, the world size from
//   SLURM_STEP_NUM_TASKS or else SLURM_NTASKS, and the local size from
//   SLURM_STEP_TASKS_PER_NODE (e.g. "4(x2),3") at index SLURM_NODEID or else
//   SLURM_NTASKS_PER_NODE. Step variables win because they describe this srun
//   step, while the job's may describe a larger allocation.
// - PMIX_RANK (set by mpirun and by srun --mpi=pmix), when present, must agree
//   with the launcher's rank.
// - none of the above: rank 0 of a world of 1, launcher "none".
// A malformed value, a missing companion variable or inconsistent values
// (rank >= size, ...) is an InvalidArgument error that names the variable.
absl::StatusOr<LaunchEnv> LaunchEnvFromVariables(
    const std::map<std::string, std::string>& env);

// LaunchEnvFromVariables over this process's environment.
absl::StatusOr<LaunchEnv> DetectLaunchEnv();

// "rank 3 of 8 (local 1 of 4, launched by srun)", for logs.
std::string DescribeLaunchEnv(const LaunchEnv& env);

}  // namespace prefopt::comm

#endif  // PREFOPT_COMM_LAUNCH_ENV_H_
