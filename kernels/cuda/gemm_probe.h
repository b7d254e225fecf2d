// Measures cuBLASLt's own GEMM throughput on device-resident operands: the
// ceiling that op_bench holds the backend's GEMMs against.
#ifndef PREFOPT_KERNELS_CUDA_GEMM_PROBE_H_
#define PREFOPT_KERNELS_CUDA_GEMM_PROBE_H_

#include "absl/status/statusor.h"

namespace prefopt::kernels::cuda {

enum class GemmProbeType {
  kBf16,          // bf16 A and B, fp32 D, fp32 accumulation
  kFp32,          // fp32 throughout, no TF32
  kFp32FastBf16,  // fp32 A, B and D; cuBLAS rounds inputs to bf16 itself
                  // (CUBLAS_COMPUTE_32F_FAST_16BF)
};

// TFLOP/s (2 m n k per product) of `iters` back-to-back products
// D[m x n] = A[k x m]^T B[k x n] (column-major; the layout of
// CudaBackend::MatmulForward) on random operands on device 0, timed with CUDA
// events after two untimed warm-up products. Fails when there is no usable
// GPU, the build has no CUDA, or cuBLASLt has no algorithm for the type.
absl::StatusOr<double> MeasureCublasGemmTflops(GemmProbeType type, int m, int n,
                                               int k, int iters);

}  // namespace prefopt::kernels::cuda

#endif  // PREFOPT_KERNELS_CUDA_GEMM_PROBE_H_
