// The NCCL backend in one process: over one GPU when there is one (printing
// "SKIPPED: no GPU" otherwise), and its clear errors without a GPU or without
// CUDA. Multi-GPU runs use collectives_check with PREFOPT_COMM_TEST_DEVICE=gpu.
#include "comm/nccl_communicator.h"

#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include "comm/create_communicator.h"
#include "comm/device_buffer.h"
#include "comm/failure.h"
#include "comm/launch_env.h"
#include "gtest/gtest.h"
#include "kernels/cuda/device_info.h"

namespace prefopt::comm {
namespace {

bool HasGpu() { return kernels::cuda::QueryDevices().device_count > 0; }

TEST(NcclCommunicatorTest, WithoutCudaCreationSaysSo) {
  if (BuiltWithNccl()) GTEST_SKIP() << "this build has NCCL";
  absl::StatusOr<std::unique_ptr<Communicator>> comm =
      CreateCommunicator(LaunchEnv{}, Device::kGpu, nullptr, nullptr);
  ASSERT_FALSE(comm.ok());
  EXPECT_EQ(comm.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(comm.status().message().find("built without CUDA/NCCL"),
            absl::string_view::npos)
      << comm.status();
}

TEST(NcclCommunicatorTest, WithoutGpuCreationSaysSo) {
  if (!BuiltWithNccl() || HasGpu()) {
    GTEST_SKIP() << "needs a CUDA build on a machine without a GPU";
  }
  absl::StatusOr<std::unique_ptr<Communicator>> comm =
      CreateCommunicator(LaunchEnv{}, Device::kGpu, nullptr, nullptr);
  ASSERT_FALSE(comm.ok());
  EXPECT_EQ(comm.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(comm.status().message().find("no usable CUDA device"),
            absl::string_view::npos)
      << comm.status();
}

class OneGpuTest : public testing::Test {
 protected:
  void SetUp() override {
    if (!BuiltWithNccl() || !HasGpu()) {
      std::cout << "SKIPPED: no GPU\n";
      GTEST_SKIP() << "no GPU";
    }
    absl::StatusOr<std::unique_ptr<Communicator>> comm =
        CreateCommunicator(LaunchEnv{}, Device::kGpu, nullptr, nullptr);
    ASSERT_TRUE(comm.ok()) << comm.status();
    comm_ = *std::move(comm);
  }

  DeviceBuffer Buffer(const std::vector<float>& host) {
    absl::StatusOr<DeviceBuffer> b =
        DeviceBuffer::Allocate(Device::kGpu, host.size() * sizeof(float));
    EXPECT_TRUE(b.ok()) << b.status();
    EXPECT_TRUE(b->Upload(host.data(), host.size() * sizeof(float)).ok());
    return *std::move(b);
  }

  std::vector<float> Host(const DeviceBuffer& b, size_t n) {
    std::vector<float> host(n);
    EXPECT_TRUE(b.Download(host.data(), n * sizeof(float)).ok());
    return host;
  }

  std::unique_ptr<Communicator> comm_;
};

TEST_F(OneGpuTest, CollectivesOnDeviceBuffers) {
  EXPECT_EQ(comm_->Name(), "nccl");
  EXPECT_EQ(comm_->world_size(), 1);
  const std::vector<float> v = {1.0f, -2.5f, 3.0f, 4.0f};
  DeviceBuffer a = Buffer(v);
  ASSERT_TRUE(comm_->AllReduceSum(a.floats(), 4).ok());
  ASSERT_TRUE(comm_->AllReduceAvg(a.floats(), 4).ok());
  EXPECT_EQ(Host(a, 4), v);
  DeviceBuffer b = Buffer({0, 0, 0, 0});
  ASSERT_TRUE(comm_->ReduceScatterSum(a.floats(), b.floats(), 4).ok());
  EXPECT_EQ(Host(b, 4), v);
  DeviceBuffer c = Buffer({0, 0, 0, 0});
  ASSERT_TRUE(comm_->AllGather(a.floats(), c.floats(), 4).ok());
  EXPECT_EQ(Host(c, 4), v);
  ASSERT_TRUE(comm_->Broadcast(a.data(), 16, 0).ok());
  EXPECT_EQ(Host(a, 4), v);
  const absl::Status mixed =
      comm_->ReduceScatterSum(a.floats(), std::vector<float>(4).data(), 4);
  EXPECT_EQ(mixed.code(), absl::StatusCode::kInvalidArgument) << mixed;
  EXPECT_TRUE(comm_->Barrier().ok());
}

TEST_F(OneGpuTest, HostBuffersGoThroughTheHostCommunicator) {
  std::vector<double> sums = {1e10 + 1, 2.0};
  ASSERT_TRUE(comm_->AllReduceSum(sums.data(), sums.size()).ok());
  EXPECT_EQ(sums, (std::vector<double>{1e10 + 1, 2.0}));
  EXPECT_TRUE(CheckSameAcrossRanks(*comm_, 99, "config hash").ok());
}

TEST_F(OneGpuTest, NonBlockingBuckets) {
  const size_t n = 1 << 20;
  DeviceBuffer grads = Buffer(std::vector<float>(2 * n, 0.5f));
  std::unique_ptr<PendingReduce> first =
      comm_->StartAllReduceSum(grads.floats() + n, n);
  std::unique_ptr<PendingReduce> second =
      comm_->StartAllReduceSum(grads.floats(), n);
  ASSERT_TRUE(first->Test().ok());
  EXPECT_TRUE(first->Wait().ok());
  EXPECT_TRUE(second->Wait().ok());
  const absl::StatusOr<bool> done = second->Test();
  ASSERT_TRUE(done.ok());
  EXPECT_TRUE(*done);
  EXPECT_EQ(Host(grads, 2 * n), std::vector<float>(2 * n, 0.5f));
}

}  // namespace
}  // namespace prefopt::comm
