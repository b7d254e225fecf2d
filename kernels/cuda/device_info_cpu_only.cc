// The CPU-only build of device_info: used when no CUDA toolkit was found.
#include "kernels/cuda/device_info.h"

namespace prefopt::kernels::cuda {

bool BuiltWithCuda() { return false; }

DeviceInfo QueryDevices() {
  DeviceInfo info;
  info.unavailable_reason = "built without the CUDA toolkit";
  return info;
}

}  // namespace prefopt::kernels::cuda
