// The GEMM probe in a build without the CUDA toolkit.
#include "absl/status/status.h"
#include "kernels/cuda/gemm_probe.h"

namespace prefopt::kernels::cuda {

absl::StatusOr<double> MeasureCublasGemmTflops(GemmProbeType /*type*/,
                                               int /*m*/, int /*n*/, int /*k*/,
                                               int /*iters*/) {
  return absl::UnavailableError("built without CUDA");
}

}  // namespace prefopt::kernels::cuda
