// RegisterGpuCommunicators in a build without the CUDA toolkit: the factory
// says why there is no GPU communicator.
#include <memory>

#include "absl/status/status.h"
#include "comm/gpu_communicator.h"
#include "comm/gpu_ranks.h"
#include "comm/nccl_communicator.h"

namespace prefopt::comm {

void RegisterGpuCommunicators() {
  RegisterGpuCommunicator(
      [](Communicator* host, int local_rank, void*, absl::Duration timeout)
          -> absl::StatusOr<std::unique_ptr<Communicator>> {
        return CreateNcclCommunicator(Borrow(host), local_rank, timeout);
      });
}

}  // namespace prefopt::comm
