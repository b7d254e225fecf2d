// Picks and creates the communicator of this process from its launch
// environment and device.
#ifndef PREFOPT_COMM_CREATE_COMMUNICATOR_H_
#define PREFOPT_COMM_CREATE_COMMUNICATOR_H_

#include <memory>

#include "absl/status/statusor.h"
#include "comm/communicator.h"
#include "comm/launch_env.h"

namespace prefopt::comm {

// - world size 1 without a launcher: kCpu → LocalCommunicator; kGpu → NCCL
//   over a LocalCommunicator (one GPU, same code path as a multi-GPU run).
// - otherwise MPI is initialized (argc/argv as for MPI_Init_thread, may be
//   null), and must see the same rank and world size as `env` (it does not
//   when srun starts an Open MPI program without --mpi=pmix: each process is
//   then an MPI singleton); kCpu → MpiCommunicator; kGpu → NCCL
//   bootstrapped over it, on GPU env.local_rank.
// For kGpu, the selected GPU is the current CUDA device afterwards: create the
// communicator before the CUDA kernel backend so both use the same GPU.
absl::StatusOr<std::unique_ptr<Communicator>> CreateCommunicator(
    const LaunchEnv& env, Device device, int* argc, char*** argv);

}  // namespace prefopt::comm

#endif  // PREFOPT_COMM_CREATE_COMMUNICATOR_H_
