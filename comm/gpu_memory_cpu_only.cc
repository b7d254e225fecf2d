// GPU memory in a build without the CUDA toolkit: there is none.
#include "comm/gpu_memory.h"

namespace prefopt::comm::gpu {
namespace {

absl::Status NoCuda() {
  return absl::FailedPreconditionError(
      "GPU buffers are not available: prefopt was built without CUDA");
}

}  // namespace

absl::StatusOr<void*> Allocate(size_t /*bytes*/) { return NoCuda(); }

void Free(void* /*p*/) {}

absl::Status Copy(void* /*dst*/, const void* /*src*/, size_t /*bytes*/) {
  return NoCuda();
}

absl::Status Synchronize() { return NoCuda(); }

}  // namespace prefopt::comm::gpu
