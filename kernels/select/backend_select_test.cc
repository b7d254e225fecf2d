#include "kernels/select/backend_select.h"

#include <memory>

#include "gtest/gtest.h"
#include "kernels/cpu/cpu_backend.h"

namespace prefopt::kernels {
namespace {

TEST(SelectBackend, CpuAndAutoWithoutAGpu) {
  RegisterGpuBackend(nullptr);
  auto cpu = SelectBackend(DeviceKind::kCpu, PrecisionKind::kDefault, 0);
  ASSERT_TRUE(cpu.ok()) << cpu.status();
  EXPECT_FALSE(cpu->gpu);
  EXPECT_EQ(cpu->description, "device CPU (fp32)");
  auto automatic = SelectBackend(DeviceKind::kAuto, PrecisionKind::kDefault, 0);
  ASSERT_TRUE(automatic.ok());
  EXPECT_EQ(automatic->description,
            "device CPU (fp32; AUTO found no usable GPU: this program has no "
            "GPU backend)");
  auto gpu = SelectBackend(DeviceKind::kGpu, PrecisionKind::kDefault, 1);
  EXPECT_EQ(gpu.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(gpu.status().message(),
            "device: GPU, but GPU 1 cannot be used: this program has no GPU "
            "backend");
  auto bf16 = SelectBackend(DeviceKind::kCpu, PrecisionKind::kBf16, 0);
  EXPECT_EQ(bf16.status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(SelectBackend, RegisteredGpu) {
  int seen_device = -1;
  bool seen_bf16 = false;
  RegisterGpuBackend(
      [&](int device, bool bf16) -> absl::StatusOr<std::unique_ptr<Backend>> {
        seen_device = device;
        seen_bf16 = bf16;
        if (device > 0) return absl::UnavailableError("only one GPU here");
        return std::unique_ptr<Backend>(new CpuBackend());
      });
  auto gpu = SelectBackend(DeviceKind::kAuto, PrecisionKind::kDefault, 0);
  ASSERT_TRUE(gpu.ok());
  EXPECT_TRUE(gpu->gpu);
  EXPECT_TRUE(seen_bf16);  // the GPU's default
  EXPECT_EQ(seen_device, 0);
  auto fp32 = SelectBackend(DeviceKind::kGpu, PrecisionKind::kFp32, 0);
  ASSERT_TRUE(fp32.ok());
  EXPECT_FALSE(seen_bf16);
  // AUTO falls back to the CPU and says why; GPU is an error.
  auto fallback = SelectBackend(DeviceKind::kAuto, PrecisionKind::kDefault, 1);
  ASSERT_TRUE(fallback.ok());
  EXPECT_FALSE(fallback->gpu);
  EXPECT_EQ(fallback->description,
            "device CPU (fp32; AUTO found no usable GPU: only one GPU here)");
  EXPECT_FALSE(
      SelectBackend(DeviceKind::kGpu, PrecisionKind::kDefault, 1).ok());
  RegisterGpuBackend(nullptr);
}

}  // namespace
}  // namespace prefopt::kernels
