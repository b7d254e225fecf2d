// CudaBackend in a build without the CUDA toolkit: Create says so.
#include "absl/status/status.h"
#include "kernels/cuda/cuda_backend.h"

namespace prefopt::kernels {

absl::StatusOr<std::unique_ptr<CudaBackend>> CudaBackend::Create(
    int /*device*/, Precision /*precision*/) {
  return absl::UnavailableError(
      "built without CUDA (no toolkit at /usr/local/cuda or $CUDA_PATH when "
      "this binary was built)");
}

// Unreachable (Create never succeeds); defined for callers that link it.
std::string CudaBackend::DeviceName() const { return ""; }
void* CudaBackend::stream() const { return nullptr; }

CudaBackend::MemoryStats CudaBackend::ProcessMemoryStats() { return {}; }

}  // namespace prefopt::kernels
