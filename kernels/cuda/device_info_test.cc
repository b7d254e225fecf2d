// Probes the GPU. Without one the test says so in its output ("SKIPPED: no
// GPU") instead of passing silently.
#include "kernels/cuda/device_info.h"

#include <iostream>

#include "gtest/gtest.h"

namespace prefopt::kernels::cuda {
namespace {

TEST(DeviceInfo, ReportsADeviceOrWhyNot) {
  const DeviceInfo info = QueryDevices();
  std::cout << "built with CUDA: " << (BuiltWithCuda() ? "yes" : "no") << "\n";
  if (info.device_count == 0) {
    EXPECT_FALSE(info.unavailable_reason.empty());
    std::cout << "SKIPPED: no GPU (" << info.unavailable_reason << ")\n";
    GTEST_SKIP() << "no GPU: " << info.unavailable_reason;
  }
  EXPECT_FALSE(info.name.empty());
  EXPECT_GT(info.total_memory_bytes, 0u);
  std::cout << "GPU 0: " << info.name << ", sm_" << info.compute_major
            << info.compute_minor << ", " << info.total_memory_bytes / (1 << 20)
            << " MiB\n";
}

}  // namespace
}  // namespace prefopt::kernels::cuda
