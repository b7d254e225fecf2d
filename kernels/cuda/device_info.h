// Whether a CUDA device can be used by this process, and which. The CPU-only
// build (no CUDA toolkit at build time) always reports no device, with the
// reason, so callers and tests can fall back or skip visibly.
#ifndef PREFOPT_KERNELS_CUDA_DEVICE_INFO_H_
#define PREFOPT_KERNELS_CUDA_DEVICE_INFO_H_

#include <string>

namespace prefopt::kernels::cuda {

struct DeviceInfo {
  int device_count = 0;
  // Why no device is usable (driver missing, no GPU, built without CUDA).
  std::string unavailable_reason;
  // Of device 0 when device_count > 0.
  std::string name;
  int compute_major = 0;
  int compute_minor = 0;
  size_t total_memory_bytes = 0;
};

// True when this binary was compiled with the CUDA backend.
bool BuiltWithCuda();

DeviceInfo QueryDevices();

}  // namespace prefopt::kernels::cuda

#endif  // PREFOPT_KERNELS_CUDA_DEVICE_INFO_H_
