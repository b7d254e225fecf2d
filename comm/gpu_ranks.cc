#include "comm/gpu_ranks.h"

#include <cuda_runtime.h>

#include <cstring>
#include <memory>

#include "absl/status/statusor.h"
#include "comm/gpu_communicator.h"
#include "comm/nccl_communicator.h"
#include "comm/staged_communicator.h"

namespace prefopt::comm {
namespace {

// The device name kernels/cuda/sim/runtime.h gives the simulated GPU.
constexpr char kSimulatedDeviceName[] = "CUDA CPU simulation (prefopt cudasim)";

// Device 0 stands for all: a machine's GPUs are all simulated or none is.
bool OnSimulatedDevice() {
  cudaDeviceProp prop;
  if (cudaGetDeviceProperties(&prop, 0) != cudaSuccess) {
    cudaGetLastError();
    return false;
  }
  return std::strcmp(prop.name, kSimulatedDeviceName) == 0;
}

absl::StatusOr<std::unique_ptr<Communicator>> Create(Communicator* host,
                                                     int local_rank,
                                                     void* compute_stream,
                                                     absl::Duration timeout) {
  if (OnSimulatedDevice())
    return CreateStagedCommunicator(host, compute_stream);
  absl::StatusOr<std::unique_ptr<Communicator>> nccl =
      CreateNcclCommunicator(Borrow(host), local_rank, timeout);
  if (nccl.ok()) (*nccl)->SetComputeStream(compute_stream);
  return nccl;
}

}  // namespace

void RegisterGpuCommunicators() { RegisterGpuCommunicator(Create); }

}  // namespace prefopt::comm
