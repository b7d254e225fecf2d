// The NCCL backend of a build without the CUDA toolkit: absent, and says so.
#include <memory>

#include "absl/status/status.h"
#include "comm/nccl_communicator.h"

namespace prefopt::comm {

bool BuiltWithNccl() { return false; }

absl::StatusOr<std::unique_ptr<Communicator>> CreateNcclCommunicator(
    std::unique_ptr<Communicator> /*host*/, int /*local_rank*/,
    absl::Duration /*timeout*/) {
  return absl::FailedPreconditionError(
      "the GPU communicator (NCCL) is not in this build: prefopt was built "
      "without CUDA/NCCL (no nvcc under $CUDA_PATH or /usr/local/cuda at "
      "build time); rebuild on a machine with the CUDA toolkit and NCCL, or "
      "train on the CPU");
}

}  // namespace prefopt::comm
