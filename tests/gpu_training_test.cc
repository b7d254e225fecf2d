// The training loop on the GPU backend, here the CUDA CPU simulation
// (kernels/cuda/sim): every objective trains a tiny model for 3 steps with
// `device: GPU precision: FP32`, and its metrics and final weights match the
// same run with `device: CPU` (also with LoRA adapters). Prints "CUDA backend
// (CPU simulation)".
// //tests:gpu_training_test is the same test on a real GPU (tag gpu; it
// skips, saying why, where there is none).
#include <cmath>
#include <cstring>
#include <iostream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "kernels/cuda/cuda_backend.h"
#if defined(PREFOPT_CUDASIM_COUNTS)
#include "kernels/cuda/sim/runtime.h"
#endif
#include "kernels/select/backend_select.h"
#include "tests/fixture_util.h"
#include "trainer/config/config_loader.h"
#include "trainer/io/hf_config.h"
#include "trainer/io/weight_store.h"
#include "trainer/loop/evaluator.h"
#include "trainer/loop/trainer.h"
#include "trainer/model/generation.h"

namespace prefopt {
namespace {

constexpr int kSteps = 3;
constexpr double kLr = 3e-3;
// fp32 on both sides; the kernels sum in other orders than the CPU backend
// (tiled attention, blocked reductions), so metrics agree to rounding.
constexpr double kMetricTol = 1e-5;
// MaPO's masks min-max rescale per-token activation means over a response:
// where a map's means are nearly equal, that rescaling turns rounding-level
// differences into percent-level ones (same on any two correct backends).
constexpr double kMapoMetricTol = 1e-2;
// AdamW moves a weight by about lr per step whatever its gradient's size, so
// a gradient entry that is all rounding noise can move differently; the bound
// is 5% of the distance AdamW can move a weight in these steps.
constexpr double kWeightTol = 0.05 * kLr * 3;

struct Case {
  const char* name;
  const char* objective;  // the text inside objective { ... }
  const char* data;       // file under tests/fixtures
  const char* model =     // the text inside model { ... }
      "architecture: GPT2 vocab_size: 101 n_positions: 32 n_embd: 32 "
      "n_layer: 2 n_head: 4";
  const char* set = nullptr;  // a --set override, if any
  double metric_tol = kMetricTol;
  // MaPO's percent-level mask differences (above) reach the sign of small
  // gradient entries, which AdamW turns into lr-sized moves: its weights
  // are not compared, its metrics are.
  bool compare_weights = true;
};

constexpr char kLlama[] =
    "architecture: LLAMA vocab_size: 101 n_positions: 32 n_embd: 32 "
    "n_layer: 2 n_head: 4 n_kv_head: 2 intermediate_size: 64";

struct TrainResult {
  std::vector<std::map<std::string, double>> metrics;
  std::vector<float> weights;
  std::string log;
};

TrainResult Train(const Case& c, const char* device,
                  const char* precision = "FP32") {
  const std::string name = absl::StrCat(c.name, "_", device, "_", precision);
  const std::string text = absl::StrCat(
      "model { ", c.model, " }\n", "data { train_files: '",
      testing::WorkspacePath("tests/fixtures/"), c.data, "' max_length: 32 }\n",
      "objective { ", c.objective, " }\n", "optimizer { lr: ", kLr, " }\n",
      "batch { micro_batch_size: 4 global_batch_size: 8 }\n",
      "max_steps: ", kSteps, "\nseed: 3\nrun_dir: '",
      std::getenv("TEST_TMPDIR"), "/", name, "'\n", "device: ", device,
      "\nprecision: ", precision, "\n");
  std::vector<std::string> overrides;
  if (c.set != nullptr) overrides.push_back(c.set);
  auto config = config::LoadTrainConfig(
      testing::WriteTempFile(name + ".textproto", text), overrides);
  EXPECT_TRUE(config.ok()) << config.status();
  TrainResult run;
  if (!config.ok()) return run;
  std::ostringstream log;
  auto trainer = loop::Trainer::Create(*config, log);
  run.log = log.str();
  EXPECT_TRUE(trainer.ok()) << trainer.status();
  if (!trainer.ok()) return run;
  for (int s = 0; s < kSteps; ++s) {
    auto m = (*trainer)->Step();
    EXPECT_TRUE(m.ok()) << m.status();
    if (!m.ok()) return run;
    run.metrics.push_back(*m);
  }
  const model::Decoder& policy = (*trainer)->policy();
  run.weights.resize(policy.layout().total());
  policy.backend()->CopyToHost(run.weights.data(), policy.params(),
                               run.weights.size());
  return run;
}

// Registers the simulated CUDA backend; skips (saying why) where the build
// has none.
class SimulatedGpu : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { kernels::RegisterCudaBackend(); }
  void SetUp() override {
    // A build without the CUDA toolkit has no simulation either.
    auto gpu = kernels::SelectBackend(kernels::DeviceKind::kGpu,
                                      kernels::PrecisionKind::kFp32, 0);
    if (!gpu.ok()) {
      static bool said = false;
      if (!said) {
        said = true;
        std::cout << "SKIPPED: no GPU (" << gpu.status().message() << ")\n";
      }
      GTEST_SKIP() << gpu.status().message();
    }
  }
};

class GpuTrains : public SimulatedGpu,
                  public ::testing::WithParamInterface<Case> {};

TEST_P(GpuTrains, MatchesTheCpu) {
  const Case& c = GetParam();
  const TrainResult cpu = Train(c, "CPU");
  const TrainResult gpu = Train(c, "GPU");
  static bool said = false;
  if (!said) {
    said = true;
#if defined(PREFOPT_CUDA_SIMULATION)
    std::cout << "CUDA backend (CPU simulation): "
#else
    std::cout << "CUDA backend (GPU): "
#endif
              << gpu.log.substr(0, gpu.log.find('\n')) << "\n";
  }
  EXPECT_NE(gpu.log.find("device GPU 0 (cuda_fp32)"), std::string::npos)
      << gpu.log;
  ASSERT_EQ(cpu.metrics.size(), static_cast<size_t>(kSteps));
  ASSERT_EQ(gpu.metrics.size(), cpu.metrics.size());
  for (int s = 0; s < kSteps; ++s) {
    for (const auto& [key, want] : cpu.metrics[s]) {
      // Throughput and timing differ by nature.
      if (key.find("tok/s") != std::string::npos ||
          key.find("time") != std::string::npos ||
          key.find("per_second") != std::string::npos) {
        continue;
      }
      auto it = gpu.metrics[s].find(key);
      ASSERT_NE(it, gpu.metrics[s].end()) << key;
      EXPECT_NEAR(it->second, want, c.metric_tol * (1.0 + std::fabs(want)))
          << "step " << s << " " << key;
    }
  }
  ASSERT_EQ(gpu.weights.size(), cpu.weights.size());
  if (!c.compare_weights) return;
  double max_err = 0.0;
  for (size_t i = 0; i < cpu.weights.size(); ++i) {
    max_err =
        std::max(max_err, std::fabs(double{gpu.weights[i]} - cpu.weights[i]));
  }
  EXPECT_LE(max_err, kWeightTol) << "final weights";
}

#if defined(PREFOPT_CUDASIM_COUNTS)
// The objective's coefficients and metrics stay on the device
// (docs/objectives.md §7): in steps 2 and 3 of a DPO, SFT, implicit-reward
// SFT (both granularities), PRIOR, f-DPO + LD-DPO + WPO, CPO, SimPO or ORPO
// run (2 micro-batches a step) the simulated runtime sees 2 copies to the
// host per step, the metric sums and the gradient norm (KTO: 3, its
// pre-pass's sums too; the host path of the
// objectives copies 4 arrays of per-row values down per micro-batch, 5 with
// WPO's: 9 and 7 copies per step; SparsePO with its masks and pair math on
// the host copied 5), and no cudaMalloc at all.
TEST_F(SimulatedGpu, StepsCopyLittleAndAllocateNothing) {
  constexpr int64_t kMaxDeviceToHostPerStep = 2;
  for (const Case& c :
       {Case{"traffic_dpo", "dpo { beta: 0.1 }", "gpt2/pairs.jsonl"},
        Case{"traffic_sft", "sft {}", "demos.jsonl"},
        Case{"traffic_isft", "implicit_sft { divergence: KL beta: 0.5 }",
             "demos.jsonl"},
        Case{"traffic_isft_token",
             "implicit_sft { divergence: KL beta: 0.5 granularity: TOKEN }",
             "demos.jsonl"},
        Case{"traffic_prior", "prior { alpha: 1 }", "demos.jsonl"},
        Case{"traffic_aot", "dpo { beta: 0.1 loss_type: [AOT, AOT_UNPAIRED] }",
             "gpt2/pairs.jsonl"},
        Case{"traffic_js_ld_wpo",
             "dpo { beta: 0.1 f_divergence_type: JS_DIVERGENCE ld_alpha: 0.5 "
             "use_weighting: true }",
             "gpt2/pairs.jsonl"},
        Case{"traffic_cpo", "cpo { beta: 0.1 }", "gpt2/pairs.jsonl"},
        Case{"traffic_simpo", "cpo { loss_type: SIMPO beta: 2 cpo_alpha: 0 }",
             "gpt2/pairs.jsonl"},
        Case{"traffic_orpo", "orpo { beta: 0.1 }", "gpt2/pairs.jsonl"},
        Case{"traffic_kto", "kto { beta: 0.1 }", "gpt2/unpaired.jsonl"},
        Case{"traffic_llama_dpo", "dpo { beta: 0.1 }", "gpt2/pairs.jsonl",
             kLlama},
        Case{"traffic_sparsepo", "sparsepo { beta: 0.8 }", "gpt2/pairs.jsonl"},
        Case{"traffic_mapo", "sparsepo { mask: MAPO }", "gpt2/pairs.jsonl"}}) {
    const std::string text = absl::StrCat(
        "model { ", c.model, " }\n", "data { train_files: '",
        testing::WorkspacePath("tests/fixtures/"), c.data,
        "' max_length: 32 }\n", "objective { ", c.objective, " }\n",
        "optimizer { lr: ", kLr, " }\n",
        "batch { micro_batch_size: 4 global_batch_size: 8 }\n",
        "max_steps: 3\nseed: 3\nrun_dir: '", std::getenv("TEST_TMPDIR"), "/",
        c.name, "'\ndevice: GPU\nprecision: FP32\n");
    auto config = config::LoadTrainConfig(
        testing::WriteTempFile(absl::StrCat(c.name, ".textproto"), text), {});
    ASSERT_TRUE(config.ok()) << config.status();
    std::ostringstream log;
    auto trainer = loop::Trainer::Create(*config, log);
    ASSERT_TRUE(trainer.ok()) << trainer.status();
    ASSERT_TRUE((*trainer)->Step().ok());
    const cudasim::CallCounts before = cudasim::Counts();
    ASSERT_TRUE((*trainer)->Step().ok());
    ASSERT_TRUE((*trainer)->Step().ok());
    const cudasim::CallCounts after = cudasim::Counts();
    const int64_t down =
        after.device_to_host_copies - before.device_to_host_copies;
    const int64_t up =
        after.host_to_device_copies - before.host_to_device_copies;
    std::cout << c.name << ": per step " << down / 2.0
              << " device-to-host copies, " << up / 2.0
              << " host-to-device copies; "
              << after.device_allocations - before.device_allocations
              << " cudaMalloc calls in steps 2-3\n";
    // KTO's pre-pass sums come down once more, for z₀ (summed over the
    // ranks on the host). SparsePO runs wholly on the device, its metric
    // sums coming down once per step like the others'; a learned mask
    // network's gradient norm comes down once more (Backend::SumSquares).
    const std::string name = c.name;
    const int64_t max_down = kMaxDeviceToHostPerStep + (name == "traffic_kto") +
                             (name == "traffic_sparsepo");
    EXPECT_LE(down, 2 * max_down) << c.name;
    EXPECT_EQ(after.device_allocations, before.device_allocations) << c.name;
  }
}
#endif

// bf16 GEMMs and attention (fp32 accumulation, master weights and moments)
// against the fp32 CPU run: the losses of 3 steps agree to the bf16 bound of
// the backend's op tests (2e-2 relative), and stay finite.
TEST_F(SimulatedGpu, Bf16StaysCloseToFp32) {
  for (const Case& c :
       {Case{"bf16_dpo", "dpo { beta: 0.1 }", "gpt2/pairs.jsonl"},
        Case{"bf16_llama_sft", "sft {}", "demos.jsonl", kLlama}}) {
    const TrainResult cpu = Train(c, "CPU");
    const TrainResult gpu = Train(c, "GPU", "BF16");
    EXPECT_NE(gpu.log.find("device GPU 0 (cuda_bf16)"), std::string::npos)
        << gpu.log;
    ASSERT_EQ(cpu.metrics.size(), static_cast<size_t>(kSteps));
    ASSERT_EQ(gpu.metrics.size(), cpu.metrics.size());
    for (int s = 0; s < kSteps; ++s) {
      const double want = cpu.metrics[s].at("loss");
      const double got = gpu.metrics[s].at("loss");
      EXPECT_TRUE(std::isfinite(got));
      EXPECT_NEAR(got, want, 2e-2 * std::fabs(want)) << c.name << " step " << s;
    }
  }
}

// activation_checkpointing on the GPU backend reruns the same kernels on the
// same inputs: the metrics and final weights of 3 steps equal the stored
// path's bit for bit, in fp32 and bf16 (the kernels use no atomics, so their
// results do not depend on scheduling).
TEST_F(SimulatedGpu, RecomputationIsBitwiseTheStoredPath) {
  for (const char* precision : {"FP32", "BF16"}) {
    for (const Case& stored_case :
         {Case{"stored_dpo", "dpo { beta: 0.1 }", "gpt2/pairs.jsonl"},
          Case{"stored_llama_dpo", "dpo { beta: 0.1 }", "gpt2/pairs.jsonl",
               kLlama}}) {
      Case recomputed_case = stored_case;
      recomputed_case.name = stored_case.model == kLlama
                                 ? "recomputed_llama_dpo"
                                 : "recomputed_dpo";
      recomputed_case.set = "activation_checkpointing=true";
      const TrainResult stored = Train(stored_case, "GPU", precision);
      const TrainResult recomputed = Train(recomputed_case, "GPU", precision);
      ASSERT_EQ(stored.metrics.size(), static_cast<size_t>(kSteps));
      ASSERT_EQ(recomputed.metrics.size(), stored.metrics.size());
      for (int s = 0; s < kSteps; ++s) {
        for (const auto& [key, want] : stored.metrics[s]) {
          if (key.find("per_second") != std::string::npos) continue;
          const double got = recomputed.metrics[s].at(key);
          EXPECT_EQ(std::memcmp(&got, &want, sizeof(double)), 0)
              << precision << " " << stored_case.name << " step " << s << " "
              << key << ": " << want << " vs " << got;
        }
      }
      ASSERT_FALSE(stored.weights.empty());
      ASSERT_EQ(recomputed.weights.size(), stored.weights.size());
      EXPECT_EQ(std::memcmp(recomputed.weights.data(), stored.weights.data(),
                            stored.weights.size() * sizeof(float)),
                0)
          << precision << " " << stored_case.name << ": final weights differ";
    }
  }
}

// The same run twice on the GPU gives bitwise-identical metrics and final
// weights, in fp32 and bf16, for GPT-2 and Llama (cuda_backend.h: no
// floating-point atomics, fixed reduction orders, GEMM algorithms chosen once
// per shape). On a GPU this is the end-to-end determinism check of
// tests/gpu/run_gpu_checks.sh.
TEST_F(SimulatedGpu, RunsAreBitwiseRepeatable) {
  for (const char* precision : {"FP32", "BF16"}) {
    for (const Case& first :
         {Case{"repeat_a_dpo", "dpo { beta: 0.1 }", "gpt2/pairs.jsonl"},
          Case{"repeat_a_llama_dpo", "dpo { beta: 0.1 }", "gpt2/pairs.jsonl",
               kLlama}}) {
      Case second = first;
      second.name =
          first.model == kLlama ? "repeat_b_llama_dpo" : "repeat_b_dpo";
      const TrainResult a = Train(first, "GPU", precision);
      const TrainResult b = Train(second, "GPU", precision);
      ASSERT_EQ(a.metrics.size(), static_cast<size_t>(kSteps));
      ASSERT_EQ(b.metrics.size(), a.metrics.size());
      for (int s = 0; s < kSteps; ++s) {
        for (const auto& [key, want] : a.metrics[s]) {
          if (key.find("per_second") != std::string::npos) continue;
          const double got = b.metrics[s].at(key);
          EXPECT_EQ(std::memcmp(&got, &want, sizeof(double)), 0)
              << precision << " " << first.name << " step " << s << " " << key
              << ": " << want << " vs " << got;
        }
      }
      ASSERT_FALSE(a.weights.empty());
      ASSERT_EQ(b.weights.size(), a.weights.size());
      EXPECT_EQ(std::memcmp(a.weights.data(), b.weights.data(),
                            a.weights.size() * sizeof(float)),
                0)
          << precision << " " << first.name << ": final weights differ";
    }
  }
}

// A checkpoint written on the GPU resumes on the CPU and one written on the
// CPU resumes on the GPU (one weights/moments layout): GPU 2 steps, CPU 2,
// GPU 2 follow the uninterrupted CPU run. Learned SparsePO also carries its
// mask networks' weights and moments, held in device memory on the GPU.
TEST_F(SimulatedGpu, CheckpointsMoveBetweenDevices) {
  for (const char* objective :
       {"dpo { beta: 0.1 }", "sparsepo { beta: 0.8 }"}) {
    SCOPED_TRACE(objective);
    const std::string tag = objective[0] == 'd' ? "dpo" : "sparsepo";
    auto config_file = [&](const std::string& name) {
      return testing::WriteTempFile(
          name + ".textproto",
          absl::StrCat(
              "model { architecture: GPT2 vocab_size: 101 n_positions: 32 "
              "n_embd: 32 n_layer: 2 n_head: 4 }\n",
              "data { train_files: '",
              testing::WorkspacePath("tests/fixtures/gpt2/pairs.jsonl"),
              "' max_length: 32 shuffle: true }\n", "objective { ", objective,
              " }\noptimizer { lr: ", kLr,
              " }\nbatch { micro_batch_size: 2 global_batch_size: 2 }\n",
              "max_steps: 6\nseed: 5\nprecision: FP32\nrun_dir: '",
              std::getenv("TEST_TMPDIR"), "/", name, "'\n"));
    };
    auto run = [](const std::string& path, const std::vector<std::string>& set,
                  int until, std::vector<std::map<std::string, double>>* steps,
                  std::vector<float>* weights) {
      auto config = config::LoadTrainConfig(path, set);
      ASSERT_TRUE(config.ok()) << config.status();
      std::ostringstream log;
      auto trainer = loop::Trainer::Create(*config, log);
      ASSERT_TRUE(trainer.ok()) << trainer.status();
      while ((*trainer)->steps_done() < until) {
        auto m = (*trainer)->Step();
        ASSERT_TRUE(m.ok()) << m.status();
        steps->push_back(*m);
      }
      ASSERT_TRUE((*trainer)->SaveCheckpoint().ok());
      const model::Decoder& policy = (*trainer)->policy();
      weights->resize(policy.layout().total());
      policy.backend()->CopyToHost(weights->data(), policy.params(),
                                   weights->size());
    };
    std::vector<std::map<std::string, double>> straight, moved;
    std::vector<float> straight_weights, moved_weights;
    run(config_file(tag + "_straight"), {"device=CPU"}, 6, &straight,
        &straight_weights);
    const std::string path = config_file(tag + "_moved");
    run(path, {"device=GPU"}, 2, &moved, &moved_weights);
    run(path, {"device=CPU", "resume=latest"}, 4, &moved, &moved_weights);
    run(path, {"device=GPU", "resume=latest"}, 6, &moved, &moved_weights);
    ASSERT_EQ(straight.size(), 6u);
    ASSERT_EQ(moved.size(), 6u);
    for (int s = 0; s < 6; ++s) {
      const double want = straight[s].at("loss");
      EXPECT_NEAR(moved[s].at("loss"), want,
                  kMetricTol * (1.0 + std::fabs(want)))
          << "step " << s + 1;
    }
    ASSERT_EQ(moved_weights.size(), straight_weights.size());
    double max_err = 0.0;
    for (size_t i = 0; i < straight_weights.size(); ++i) {
      max_err = std::max(
          max_err, std::fabs(double{moved_weights[i]} - straight_weights[i]));
    }
    EXPECT_LE(max_err, 2 * kWeightTol) << "final weights (6 steps)";
  }
}

// Greedy generation with the key/value cache (prefopt generate) on the
// simulated GPU gives the CPU's tokens, for a prompt longer than one chunk.
TEST_F(SimulatedGpu, GenerationMatchesTheCpu) {
  const std::string dir = testing::WorkspacePath("tests/fixtures/gpt2/policy");
  auto spec = io::ReadHfConfig(dir);
  ASSERT_TRUE(spec.ok()) << spec.status();
  std::vector<int32_t> prompt;
  for (int i = 0; i < 11; ++i) prompt.push_back((7 * i + 3) % 101);
  model::GenerationOptions options;
  options.max_new_tokens = 12;
  std::vector<int32_t> tokens[2];
  for (int d = 0; d < 2; ++d) {
    auto selected = kernels::SelectBackend(
        d == 0 ? kernels::DeviceKind::kCpu : kernels::DeviceKind::kGpu,
        kernels::PrecisionKind::kFp32, 0);
    ASSERT_TRUE(selected.ok()) << selected.status();
    model::Capacity cap;
    cap.max_rows = 4;  // the prompt runs in chunks of 4 rows
    cap.max_seq_len = 32;
    cap.max_seqs = 1;
    auto decoder =
        model::Decoder::Create(*spec, selected->backend.get(), cap, false);
    ASSERT_TRUE(decoder.ok()) << decoder.status();
    auto store = io::WeightStore::Open(dir);
    ASSERT_TRUE(store.ok()) << store.status();
    ASSERT_TRUE((*decoder)->LoadHf(*store).ok());
    auto generator = model::Generator::Create(decoder->get());
    ASSERT_TRUE(generator.ok()) << generator.status();
    auto out = (*generator)->Generate(prompt, options);
    ASSERT_TRUE(out.ok()) << out.status();
    tokens[d] = *out;
  }
  EXPECT_EQ(tokens[1], tokens[0]);
  EXPECT_EQ(tokens[0].size(), 12u);
}

// `prefopt eval` on the GPT-2 fixture model (a Hugging Face folder) with its
// reference, on both devices.
TEST_F(SimulatedGpu, EvalMatchesTheCpu) {
  const std::string dir = testing::WorkspacePath("tests/fixtures/gpt2");
  std::map<std::string, double> metrics[2];
  const char* devices[2] = {"CPU", "GPU"};
  for (int d = 0; d < 2; ++d) {
    const std::string text = absl::StrCat(
        "model { hf_path: '", dir, "/policy' reference_hf_path: '", dir,
        "/reference' }\n", "data { train_files: '", dir,
        "/pairs.jsonl' eval_files: '", dir, "/pairs.jsonl' max_length: 64 }\n",
        "objective { dpo { beta: 0.1 } }\n", "optimizer { lr: 1e-3 }\n",
        "batch { micro_batch_size: 2 global_batch_size: 2 }\n", "run_dir: '",
        std::getenv("TEST_TMPDIR"), "/eval_", devices[d],
        "'\ndevice: ", devices[d], "\nprecision: FP32\n");
    auto config = config::LoadTrainConfig(
        testing::WriteTempFile(absl::StrCat("eval_", devices[d], ".textproto"),
                               text),
        {});
    ASSERT_TRUE(config.ok()) << config.status();
    std::ostringstream log;
    auto result = loop::EvaluateModel(*config, "", log, nullptr);
    ASSERT_TRUE(result.ok()) << result.status();
    metrics[d] = result->metrics;
    if (d == 1) {
      EXPECT_NE(log.str().find("device GPU 0 (cuda_fp32)"), std::string::npos)
          << log.str();
    }
  }
  ASSERT_FALSE(metrics[0].empty());
  for (const auto& [key, want] : metrics[0]) {
    ASSERT_TRUE(metrics[1].count(key)) << key;
    EXPECT_NEAR(metrics[1][key], want, kMetricTol * (1.0 + std::fabs(want)))
        << key;
  }
}

INSTANTIATE_TEST_SUITE_P(
    Objectives, GpuTrains,
    ::testing::Values(
        Case{"dpo", "dpo { beta: 0.1 }", "gpt2/pairs.jsonl"},
        Case{"ipo", "dpo { beta: 0.1 loss_type: IPO }", "gpt2/pairs.jsonl"},
        Case{"sft", "sft {}", "demos.jsonl"},
        Case{"prior", "prior { alpha: 1 }", "demos.jsonl"},
        Case{"isft_kl", "implicit_sft { divergence: KL beta: 0.5 }",
             "demos.jsonl"},
        Case{"isft_js_token",
             "implicit_sft { divergence: JENSEN_SHANNON beta: 0.5 "
             "granularity: TOKEN }",
             "demos.jsonl"},
        // MPO: a mixture with the SFT term, on the device path; cDPO.
        Case{"mpo",
             "dpo { beta: 0.1 loss_type: [SIGMOID, BCO_PAIR, SFT] "
             "loss_weights: [0.8, 0.2, 1.0] }",
             "gpt2/pairs.jsonl"},
        // f-DPO, LD-DPO and WPO together (per-token reference log-probs and
        // log Σ p² on the device).
        Case{"js_ld_wpo",
             "dpo { beta: 0.1 f_divergence_type: JS_DIVERGENCE ld_alpha: 0.5 "
             "use_weighting: true }",
             "gpt2/pairs.jsonl"},
        Case{"cdpo_hinge",
             "dpo { beta: 0.1 label_smoothing: 0.1 loss_type: [SIGMOID, "
             "HINGE] }",
             "gpt2/pairs.jsonl"},
        // AOT sorts across the micro-batch, on the device too.
        Case{"aot", "dpo { beta: 0.1 loss_type: AOT }", "gpt2/pairs.jsonl"},
        Case{"aot_unpaired", "dpo { beta: 0.1 loss_type: AOT_UNPAIRED }",
             "gpt2/pairs.jsonl"},
        Case{"llama_dpo", "dpo { beta: 0.1 }", "gpt2/pairs.jsonl", kLlama},
        Case{"llama_sft", "sft {}", "demos.jsonl", kLlama},
        Case{"sparsepo_learned", "sparsepo { beta: 0.8 }", "gpt2/pairs.jsonl"},
        Case{"sparsepo_mapo",
             "sparsepo { mask: MAPO mapo_groups: [ATTN, RESID, LOGITS] }",
             "gpt2/pairs.jsonl",
             "architecture: GPT2 vocab_size: 101 n_positions: 32 n_embd: 32 "
             "n_layer: 2 n_head: 4",
             nullptr, kMapoMetricTol, false},
        Case{"dpo_live_reference", "dpo { beta: 0.1 }", "gpt2/pairs.jsonl",
             "architecture: GPT2 vocab_size: 101 n_positions: 32 n_embd: 32 "
             "n_layer: 2 n_head: 4",
             "model.live_reference=true"},
        // TR-DPO: the reference is mixed with the policy on the device after
        // steps 1 and 2, so steps 2 and 3 score against a moved reference.
        Case{"tr_dpo",
             "dpo { beta: 0.1 sync_ref_model: true ref_model_sync_steps: 1 }",
             "gpt2/pairs.jsonl",
             "architecture: GPT2 vocab_size: 101 n_positions: 32 n_embd: 32 "
             "n_layer: 2 n_head: 4",
             "model.live_reference=true"},
        // KTO's pre-pass scores the KL completions on the device too.
        Case{"kto", "kto { beta: 0.1 }", "gpt2/unpaired.jsonl"},
        Case{"kto_live_reference", "kto { beta: 0.1 }", "gpt2/unpaired.jsonl",
             "architecture: GPT2 vocab_size: 101 n_positions: 32 n_embd: 32 "
             "n_layer: 2 n_head: 4",
             "model.live_reference=true"}),
    [](const ::testing::TestParamInfo<Case>& info) {
      return std::string(info.param.name);
    });

// The reference-free objectives (docs/objectives.md §8), their coefficients
// computed on the device; ORPO also scores the chosen prompts' rows.
INSTANTIATE_TEST_SUITE_P(
    ReferenceFree, GpuTrains,
    ::testing::Values(
        Case{"cpo", "cpo { beta: 0.1 }", "gpt2/pairs.jsonl"},
        Case{"simpo", "cpo { loss_type: SIMPO beta: 2 cpo_alpha: 0 }",
             "gpt2/pairs.jsonl"},
        Case{"alphapo",
             "cpo { loss_type: ALPHAPO beta: 2 alpha: 0.5 cpo_alpha: 0 }",
             "gpt2/pairs.jsonl"},
        Case{"orpo", "orpo { beta: 0.1 }", "gpt2/pairs.jsonl"},
        Case{"llama_orpo", "orpo { beta: 0.1 }", "gpt2/pairs.jsonl", kLlama}),
    [](const ::testing::TestParamInfo<Case>& info) {
      return std::string(info.param.name);
    });

// LoRA (docs/lora.md): the adapters on the device, every projection kind
// (fused q|k|v and gate|up parts on Llama), dropout masks drawn on the host
// alike, the reference (adapters off) precomputed or live; the compared
// weights are the adapters.
constexpr char kGpt2Lora[] =
    "architecture: GPT2 vocab_size: 101 n_positions: 32 n_embd: 32 "
    "n_layer: 2 n_head: 4 lora { r: 4 alpha: 8 dropout: 0.1 "
    "target_modules: 'all-linear' }";
constexpr char kLlamaLora[] =
    "architecture: LLAMA vocab_size: 101 n_positions: 32 n_embd: 32 "
    "n_layer: 2 n_head: 4 n_kv_head: 2 intermediate_size: 64 "
    "lora { r: 4 alpha: 8 use_rslora: true target_modules: 'all-linear' }";

INSTANTIATE_TEST_SUITE_P(
    Lora, GpuTrains,
    ::testing::Values(
        Case{"lora_dpo", "dpo { beta: 0.1 }", "gpt2/pairs.jsonl", kGpt2Lora},
        Case{"lora_llama_dpo_live_reference", "dpo { beta: 0.1 }",
             "gpt2/pairs.jsonl", kLlamaLora, "model.live_reference=true"},
        Case{"lora_llama_kto", "kto { beta: 0.1 }", "gpt2/unpaired.jsonl",
             kLlamaLora},
        // model.base_dtype: the frozen weights widened from bf16 on the
        // device.
        Case{"lora_bf16_base", "dpo { beta: 0.1 }", "gpt2/pairs.jsonl",
             kGpt2Lora, "model.base_dtype=WEIGHT_BF16"},
        Case{"lora_llama_bf16_base", "dpo { beta: 0.1 }", "gpt2/pairs.jsonl",
             kLlamaLora, "model.base_dtype=WEIGHT_BF16"},
        // SparsePO: the policy in reference mode is its own reference, and
        // the frozen output embedding comes to the host once.
        Case{"lora_sparsepo", "sparsepo { beta: 0.8 }", "gpt2/pairs.jsonl",
             kGpt2Lora},
        Case{"lora_llama_sparsepo_mapo", "sparsepo { mask: MAPO }",
             "gpt2/pairs.jsonl", kLlamaLora, nullptr, kMapoMetricTol, false}),
    [](const ::testing::TestParamInfo<Case>& info) {
      return std::string(info.param.name);
    });

}  // namespace
}  // namespace prefopt
