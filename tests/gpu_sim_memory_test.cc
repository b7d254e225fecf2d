// Device memory of the training loop on the CUDA CPU simulation
// (kernels/cuda/sim): a device too small for the model ends the run with
// exit status 1 and an error naming the buffer and its size; running out in
// the middle of a run keeps the last complete checkpoint, which a later run
// resumes; and steady-state steps allocate no device memory.
#include <cstdlib>
#include <filesystem>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "kernels/cuda/cuda_backend.h"
#include "kernels/cuda/sim/runtime.h"
#include "kernels/select/backend_select.h"
#include "tests/fixture_util.h"
#include "trainer/config/config_loader.h"
#include "trainer/loop/trainer.h"

namespace prefopt {
namespace {

// The cuBLASLt workspace CudaBackend::Create allocates (cuda_backend.cc).
constexpr size_t kLtWorkspaceBytes = size_t{32} << 20;

std::string RunDir(const std::string& name) {
  return absl::StrCat(std::getenv("TEST_TMPDIR"), "/", name);
}

// A tiny GPT-2 run on the simulated GPU (DPO unless `objective` says
// otherwise): `steps` steps, a checkpoint after every step.
TrainConfig Config(const std::string& name, int steps,
                   const std::vector<std::string>& overrides = {},
                   const std::string& objective = "dpo { beta: 0.1 }",
                   const std::string& data = "gpt2/pairs.jsonl") {
  const std::string text = absl::StrCat(
      "model { architecture: GPT2 vocab_size: 101 n_positions: 32 n_embd: 32 "
      "n_layer: 2 n_head: 4 }\n",
      "data { train_files: '", testing::WorkspacePath("tests/fixtures/" + data),
      "' max_length: 32 }\n", "objective { ", objective, " }\n",
      "optimizer { lr: 3e-3 }\n",
      "batch { micro_batch_size: 2 global_batch_size: 2 }\n",
      "max_steps: ", steps, "\nsave_every_steps: 1\nseed: 3\n", "run_dir: '",
      RunDir(name), "'\ndevice: GPU\nprecision: FP32\n");
  auto config = config::LoadTrainConfig(
      testing::WriteTempFile(name + ".textproto", text), overrides);
  EXPECT_TRUE(config.ok()) << config.status();
  return config.ok() ? *config : TrainConfig();
}

class SimulatedGpuMemory : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { kernels::RegisterCudaBackend(); }
  void SetUp() override {
    auto gpu = kernels::SelectBackend(kernels::DeviceKind::kGpu,
                                      kernels::PrecisionKind::kFp32, 0);
    if (!gpu.ok()) GTEST_SKIP() << gpu.status().message();
    // Each death test runs in a fresh process that re-runs the test up to it.
    GTEST_FLAG_SET(death_test_style, "threadsafe");
  }
};

TEST_F(SimulatedGpuMemory, TooSmallAtStartNamesTheBuffer) {
  // Room for the backend itself, not for the model's parameters.
  EXPECT_EXIT(
      {
        cudasim::SetDeviceMemoryBytes(kLtWorkspaceBytes + (16 << 10));
        std::ostringstream log;
        auto trainer = loop::Trainer::Create(Config("start", 2), log);
        std::exit(trainer.ok() ? 0 : 2);
      },
      ::testing::ExitedWithCode(1),
      "CudaBackend: out of GPU memory: cudaMalloc of [0-9.]+ MiB \\([0-9]+ "
      "bytes\\) for policy model: parameters failed \\(out of memory\\); "
      "[0-9.]+ MiB free of 32.0 MiB.*micro_batch_size");
}

TEST_F(SimulatedGpuMemory, MidRunKeepsTheLastCheckpoint) {
  // Two of four steps, checkpointed.
  {
    std::ostringstream log;
    auto trainer = loop::Trainer::Create(Config("midrun", 4), log);
    ASSERT_TRUE(trainer.ok()) << trainer.status();
    ASSERT_TRUE((*trainer)->Step().ok());
    ASSERT_TRUE((*trainer)->Step().ok());
    ASSERT_TRUE((*trainer)->SaveCheckpoint().ok());
  }
  ASSERT_TRUE(
      std::filesystem::exists(RunDir("midrun") + "/checkpoints/step_2"));
  // What the resumed run needs at start and during its first step (step 3),
  // when the backend's scratch (rounded up to 2 MiB) is allocated. Step saves
  // nothing, so this probe leaves the run dir as it was.
  size_t at_start = 0, after_step = 0;
  {
    const size_t base = cudasim::DeviceMemoryUsedBytes();
    std::ostringstream log;
    auto trainer =
        loop::Trainer::Create(Config("midrun", 4, {"resume=latest"}), log);
    ASSERT_TRUE(trainer.ok()) << trainer.status();
    at_start = cudasim::DeviceMemoryUsedBytes() - base;
    ASSERT_TRUE((*trainer)->Step().ok());
    after_step = cudasim::DeviceMemoryUsedBytes() - base;
  }
  ASSERT_GE(after_step, at_start + (size_t{2} << 20));
  // Resumed with room to start but not for step 3's scratch.
  EXPECT_EXIT(
      {
        cudasim::SetDeviceMemoryBytes(cudasim::DeviceMemoryUsedBytes() +
                                      at_start + (size_t{1} << 20));
        std::ostringstream log;
        auto trainer =
            loop::Trainer::Create(Config("midrun", 4, {"resume=latest"}), log);
        std::exit(trainer.ok() && (*trainer)->Run().ok() ? 0 : 2);
      },
      ::testing::ExitedWithCode(1),
      "out of GPU memory: cudaMalloc of 2.0 MiB \\(2097152 bytes\\) for "
      "training step 3: CUDA backend scratch \\(.*\\) failed");
  // Nothing past step 2 was saved, and step 2 resumes to the end.
  EXPECT_FALSE(
      std::filesystem::exists(RunDir("midrun") + "/checkpoints/step_3"));
  std::ostringstream log;
  auto resumed =
      loop::Trainer::Create(Config("midrun", 4, {"resume=latest"}), log);
  ASSERT_TRUE(resumed.ok()) << resumed.status();
  EXPECT_EQ((*resumed)->steps_done(), 2);
  ASSERT_TRUE((*resumed)->Run().ok());
  EXPECT_TRUE(
      std::filesystem::exists(RunDir("midrun") + "/checkpoints/step_4"));
}

// docs/architecture.md: the backend's scratch grows to the largest call, so
// after the first step a run makes no cudaMalloc calls, whatever the
// objective (SparsePO's mask networks and MaPO's masks included).
TEST_F(SimulatedGpuMemory, SteadyStateStepsDoNotAllocate) {
  struct Objective {
    const char* name;
    const char* text;
    const char* data;
  };
  for (const Objective& o : {
           Objective{"dpo", "dpo { beta: 0.1 }", "gpt2/pairs.jsonl"},
           Objective{"sparsepo", "sparsepo { beta: 0.8 }", "gpt2/pairs.jsonl"},
           Objective{"mapo",
                     "sparsepo { mask: MAPO mapo_groups: [ATTN, RESID, "
                     "LOGITS] }",
                     "gpt2/pairs.jsonl"},
           Objective{"kto", "kto { beta: 0.1 }", "gpt2/unpaired.jsonl"},
           Objective{"isft", "implicit_sft { divergence: KL beta: 0.5 }",
                     "demos.jsonl"},
       }) {
    SCOPED_TRACE(o.name);
    std::ostringstream log;
    auto trainer = loop::Trainer::Create(
        Config(absl::StrCat("steady_", o.name), 3, {}, o.text, o.data), log);
    ASSERT_TRUE(trainer.ok()) << trainer.status();
    ASSERT_TRUE((*trainer)->Step().ok());
    const size_t after_first =
        kernels::CudaBackend::ProcessMemoryStats().allocations;
    ASSERT_TRUE((*trainer)->Step().ok());
    ASSERT_TRUE((*trainer)->Step().ok());
    EXPECT_EQ(kernels::CudaBackend::ProcessMemoryStats().allocations,
              after_first);
  }
}

}  // namespace
}  // namespace prefopt
