#include "comm/gpu_memory.h"

#include <cuda_runtime.h>

#include <string>

#include "absl/strings/str_cat.h"

namespace prefopt::comm::gpu {
namespace {

absl::Status CudaError(cudaError_t e, const std::string& call) {
  return absl::InternalError(absl::StrCat(call,
                                          " failed: ", cudaGetErrorName(e),
                                          " (", cudaGetErrorString(e), ")"));
}

}  // namespace

absl::StatusOr<void*> Allocate(size_t bytes) {
  void* p = nullptr;
  const cudaError_t e = cudaMalloc(&p, bytes);
  if (e != cudaSuccess) {
    return CudaError(e, absl::StrCat("cudaMalloc(", bytes, " bytes)"));
  }
  return p;
}

void Free(void* p) { cudaFree(p); }

absl::Status Copy(void* dst, const void* src, size_t bytes) {
  const cudaError_t e = cudaMemcpy(dst, src, bytes, cudaMemcpyDefault);
  if (e != cudaSuccess) {
    return CudaError(e, absl::StrCat("cudaMemcpy(", bytes, " bytes)"));
  }
  return absl::OkStatus();
}

absl::Status Synchronize() {
  const cudaError_t e = cudaDeviceSynchronize();
  if (e != cudaSuccess) return CudaError(e, "cudaDeviceSynchronize");
  return absl::OkStatus();
}

}  // namespace prefopt::comm::gpu
