#include "comm/create_communicator.h"

#include <memory>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "comm/local_communicator.h"
#include "comm/mpi_communicator.h"
#include "comm/nccl_communicator.h"

namespace prefopt::comm {

absl::StatusOr<std::unique_ptr<Communicator>> CreateCommunicator(
    const LaunchEnv& env, Device device, int* argc, char*** argv) {
  std::unique_ptr<Communicator> host;
  if (env.launcher == "none" && env.world_size == 1) {
    host = std::make_unique<LocalCommunicator>();
  } else {
    absl::StatusOr<std::unique_ptr<MpiCommunicator>> mpi =
        MpiCommunicator::Create(argc, argv);
    if (!mpi.ok()) return mpi.status();
    if ((*mpi)->rank() != env.rank || (*mpi)->world_size() != env.world_size) {
      return absl::FailedPreconditionError(absl::StrCat(
          "the launcher started this process as ", DescribeLaunchEnv(env),
          ", but MPI sees rank ", (*mpi)->rank(), " of ", (*mpi)->world_size(),
          ". Under Slurm, start the ranks with `srun --mpi=pmix` (see "
          "launch/slurm/README.md); under mpirun, run the binary with the "
          "mpirun of the Open MPI it was built against"));
    }
    host = *std::move(mpi);
  }
  if (device == Device::kCpu) return host;
  return CreateNcclCommunicator(std::move(host), env.local_rank);
}

}  // namespace prefopt::comm
