#include <cuda_runtime.h>

#include "kernels/cuda/device_info.h"

namespace prefopt::kernels::cuda {

bool BuiltWithCuda() { return true; }

DeviceInfo QueryDevices() {
  DeviceInfo info;
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    info.unavailable_reason = cudaGetErrorString(err);
    return info;
  }
  if (count == 0) {
    info.unavailable_reason = "no CUDA device found";
    return info;
  }
  info.device_count = count;
  cudaDeviceProp prop;
  if (cudaGetDeviceProperties(&prop, 0) == cudaSuccess) {
    info.name = prop.name;
    info.compute_major = prop.major;
    info.compute_minor = prop.minor;
    info.total_memory_bytes = prop.totalGlobalMem;
  }
  return info;
}

}  // namespace prefopt::kernels::cuda
