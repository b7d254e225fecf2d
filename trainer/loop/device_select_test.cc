// SelectDevice on the CUDA CPU simulation (one simulated GPU): each rank
// takes the GPU of its node-local rank (device 0 when the launcher bound one
// GPU to it), and ranks that outnumber a node's
// GPUs, a driver older than the CUDA runtime, or bf16 without a GPU each get
// an error that says what to change.
#include "trainer/loop/device_select.h"

#include <cuda_runtime.h>

#include <cstdlib>
#include <string>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "kernels/cuda/cuda_backend.h"

namespace prefopt::loop {
namespace {

// Open MPI's variables for rank `local` of `local_size` on one node.
void LaunchedByMpirun(int local, int local_size) {
  const std::string rank = std::to_string(local);
  const std::string size = std::to_string(local_size);
  setenv("OMPI_COMM_WORLD_RANK", rank.c_str(), 1);
  setenv("OMPI_COMM_WORLD_SIZE", size.c_str(), 1);
  setenv("OMPI_COMM_WORLD_LOCAL_RANK", rank.c_str(), 1);
  setenv("OMPI_COMM_WORLD_LOCAL_SIZE", size.c_str(), 1);
}

TrainConfig Device(TrainConfig::Device device) {
  TrainConfig config;
  config.set_device(device);
  return config;
}

class SimulatedGpuSelection : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { kernels::RegisterCudaBackend(); }
  void SetUp() override {
    unsetenv("PREFOPT_CUDASIM_DRIVER_VERSION");
    unsetenv("CUDA_VISIBLE_DEVICES");
    LaunchedByMpirun(0, 1);
    auto gpu = SelectDevice(Device(TrainConfig::GPU), 0);
    if (!gpu.ok()) GTEST_SKIP() << gpu.status().message();
  }
  void TearDown() override {
    unsetenv("PREFOPT_CUDASIM_DRIVER_VERSION");
    unsetenv("CUDA_VISIBLE_DEVICES");
    for (const char* name :
         {"OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE",
          "OMPI_COMM_WORLD_LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_SIZE"}) {
      unsetenv(name);
    }
  }
};

TEST_F(SimulatedGpuSelection, EachRankTakesItsNodeLocalGpu) {
  LaunchedByMpirun(0, 1);
  auto selected = SelectDevice(Device(TrainConfig::GPU), 0);
  ASSERT_TRUE(selected.ok()) << selected.status();
  EXPECT_TRUE(selected->gpu);
  EXPECT_EQ(selected->description, "device GPU 0 (cuda_bf16)");
}

TEST_F(SimulatedGpuSelection, MoreRanksOnANodeThanGpus) {
  LaunchedByMpirun(1, 2);
  for (TrainConfig::Device device : {TrainConfig::GPU, TrainConfig::AUTO}) {
    auto selected = SelectDevice(Device(device), 1);
    ASSERT_FALSE(selected.ok());
    EXPECT_EQ(selected.status().code(), absl::StatusCode::kOutOfRange);
    const std::string want = absl::StrCat(
        "rank 1: device: ", device == TrainConfig::GPU ? "GPU" : "AUTO",
        ", but GPU 1 cannot be used: CUDA device 1 requested; this machine "
        "has 1 (numbered from 0); this process is rank 1 of 2 (local 1 of "
        "2, launched by mpirun), and each rank uses the GPU of its "
        "node-local rank: start at most as many ranks per node as the node "
        "has GPUs (srun --ntasks-per-node=G --gpus-per-node=G, mpirun "
        "--map-by ppr:G:node)");
    EXPECT_EQ(selected.status().message(), want);
  }
}

TEST_F(SimulatedGpuSelection, OneBoundGpuPerRankIsDeviceZero) {
  LaunchedByMpirun(1, 2);
  setenv("CUDA_VISIBLE_DEVICES", "3", 1);
  auto selected = SelectDevice(Device(TrainConfig::GPU), 1);
  unsetenv("CUDA_VISIBLE_DEVICES");
  ASSERT_TRUE(selected.ok()) << selected.status();
  EXPECT_EQ(selected->description, "device GPU 0 (cuda_bf16)");
}

TEST_F(SimulatedGpuSelection, DriverOlderThanTheRuntime) {
  setenv("PREFOPT_CUDASIM_DRIVER_VERSION", "12020", 1);
  auto selected = SelectDevice(Device(TrainConfig::GPU), 0);
  ASSERT_FALSE(selected.ok());
  EXPECT_EQ(selected.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(selected.status().message(),
            absl::StrCat("rank 0: device: GPU, but GPU 0 cannot be used: the "
                         "NVIDIA driver supports CUDA up to 12.2, older than "
                         "the CUDA runtime this prefopt was built with (",
                         CUDART_VERSION / 1000, ".", CUDART_VERSION % 1000 / 10,
                         "): update the driver, or build with a CUDA toolkit "
                         "no newer than 12.2"));
  // AUTO trains on the CPU and says why.
  auto automatic = SelectDevice(Device(TrainConfig::AUTO), 0);
  ASSERT_TRUE(automatic.ok()) << automatic.status();
  EXPECT_FALSE(automatic->gpu);
  EXPECT_NE(automatic->description.find("AUTO found no usable GPU: the "
                                        "NVIDIA driver supports CUDA up to "
                                        "12.2"),
            std::string::npos)
      << automatic->description;
}

TEST_F(SimulatedGpuSelection, Bf16NeedsTheGpu) {
  TrainConfig config = Device(TrainConfig::CPU);
  config.set_precision(TrainConfig::BF16);
  auto selected = SelectDevice(config, 0);
  ASSERT_FALSE(selected.ok());
  EXPECT_EQ(selected.status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace prefopt::loop
