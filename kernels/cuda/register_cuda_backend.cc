// RegisterCudaBackend (cuda_backend.h), shared by the GPU, simulated and
// toolkit-less builds of CudaBackend.
#include <memory>
#include <utility>

#include "absl/status/statusor.h"
#include "kernels/cuda/cuda_backend.h"
#include "kernels/select/backend_select.h"

namespace prefopt::kernels {

void RegisterCudaBackend() {
  RegisterGpuBackend(
      [](int device, bool bf16) -> absl::StatusOr<std::unique_ptr<Backend>> {
        absl::StatusOr<std::unique_ptr<CudaBackend>> created =
            CudaBackend::Create(device, bf16 ? CudaBackend::Precision::kBf16
                                             : CudaBackend::Precision::kFp32);
        if (!created.ok()) return created.status();
        return std::unique_ptr<Backend>(*std::move(created));
      },
      [](const Backend& backend) {
        return static_cast<const CudaBackend&>(backend).stream();
      });
}

}  // namespace prefopt::kernels
