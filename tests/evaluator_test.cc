// Evaluation on held-out data: `prefopt eval`'s metrics against TRL's on the
// GPT-2 fixture's six pairs, the evaluation-only ranking metrics against
// docs/objectives.md §1 computed from TRL's per-pair log-probs, and the
// training loop's periodic evaluation, eval.json and export (whose folder
// evaluates to the loop's own last evaluation).
#include "trainer/loop/evaluator.h"

#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "tests/fixture_util.h"
#include "trainer/config/config_loader.h"
#include "trainer/loop/trainer.h"

namespace prefopt {
namespace {

using testing::ReadJson;
using testing::WorkspacePath;

// A DPO config on the GPT-2 fixture whose held-out data is `eval_file`.
TrainConfig LoadConfig(const std::string& name, const std::string& eval_file,
                       const std::string& extra = "") {
  const std::string dir = WorkspacePath("tests/fixtures/gpt2");
  const std::string run_dir =
      absl::StrCat(std::getenv("TEST_TMPDIR"), "/run_", name);
  const std::string path = testing::WriteTempFile(
      name + ".textproto",
      absl::StrCat("model { hf_path: '", dir, "/policy' reference_hf_path: '",
                   dir, "/reference' }\n", "data { train_files: '", dir,
                   "/pairs.jsonl' eval_files: '", eval_file,
                   "' max_length: 64 }\n",
                   "objective { dpo { beta: 0.1 } }\n"
                   "optimizer { lr: 1e-3 max_grad_norm: 1.0 }\n"
                   "batch { micro_batch_size: 2 global_batch_size: 2 }\n"
                   "seed: 1\nrun_dir: '",
                   run_dir, "'\n", extra));
  auto config = config::LoadTrainConfig(path, {});
  EXPECT_TRUE(config.ok()) << config.status();
  return *config;
}

std::map<std::string, double> Evaluate(const TrainConfig& config,
                                       const std::string& model_dir = "") {
  std::ostringstream log;
  auto result = loop::EvaluateModel(config, model_dir, log, nullptr);
  EXPECT_TRUE(result.ok()) << result.status();
  return result.ok() ? result->metrics : std::map<std::string, double>{};
}

TEST(EvaluateModelTest, MetricsMatchTrlOnTheFixturePairs) {
  const nlohmann::json trl =
      ReadJson(WorkspacePath("tests/fixtures/gpt2/dpo_sigmoid.json"));
  const auto m = Evaluate(
      LoadConfig("trl", WorkspacePath("tests/fixtures/gpt2/pairs.jsonl")));
  auto expect_close = [&](const std::string& name, double want) {
    ASSERT_EQ(m.count(name), 1u) << name;
    EXPECT_NEAR(m.at(name), want, std::max(1e-6, 1e-4 * std::abs(want)))
        << name;
  };
  expect_close("loss", trl["loss"].get<double>());
  for (const auto& [name, value] : trl["metrics"].items()) {
    if (!testing::IsTrlOnlyDpoMetric(name)) {
      expect_close(name, value.get<double>());
    }
  }
  // docs/objectives.md §1 from TRL's per-pair sequence log-probs; α = 0.999
  // (the data has no preference_fraction), β = 0.1.
  const auto& pp = trl["per_pair"];
  double ranked = 0, ideal = 0;
  for (size_t i = 0; i < 6; ++i) {
    const double w = pp["policy_chosen_logps"][i],
                 l = pp["policy_rejected_logps"][i];
    const double rw = pp["reference_chosen_logps"][i],
                 rl = pp["reference_rejected_logps"][i];
    ranked += w >= l;
    ideal += rw - rl + std::log(0.999 / 0.001) / 0.1 > 0;
  }
  expect_close("ranking/accuracy", ranked / 6);
  expect_close("ranking/idealized_accuracy", ideal / 6);
  expect_close("ranking/alignment_gap", (ideal - ranked) / 6);
  EXPECT_EQ(m.count("greedy/exact_match"), 1u);
}

// With preference_fraction 0.5 (raters split), the idealized ranking is the
// reference's own: 2 of the six pairs.
TEST(EvaluateModelTest, IdealizedAccuracyUsesThePreferenceFraction) {
  std::ifstream in(WorkspacePath("tests/fixtures/gpt2/pairs.jsonl"));
  std::string text, line;
  while (std::getline(in, line)) {
    nlohmann::json j = nlohmann::json::parse(line);
    j["preference_fraction"] = 0.5;
    text += j.dump() + "\n";
  }
  const nlohmann::json trl =
      ReadJson(WorkspacePath("tests/fixtures/gpt2/dpo_sigmoid.json"));
  const auto& pp = trl["per_pair"];
  double ideal = 0;
  for (size_t i = 0; i < 6; ++i) {
    ideal += pp["reference_chosen_logps"][i].get<double>() >
             pp["reference_rejected_logps"][i].get<double>();
  }
  ASSERT_EQ(ideal, 2);
  const auto m = Evaluate(
      LoadConfig("split", testing::WriteTempFile("split.jsonl", text)));
  EXPECT_DOUBLE_EQ(m.at("ranking/idealized_accuracy"), ideal / 6);
  EXPECT_NEAR(m.at("ranking/alignment_gap"),
              ideal / 6 - m.at("ranking/accuracy"), 1e-12);
}

TEST(EvaluateModelTest, ExplainsMissingEvalData) {
  TrainConfig config =
      LoadConfig("none", WorkspacePath("tests/fixtures/gpt2/pairs.jsonl"));
  config.mutable_data()->clear_eval_files();
  std::ostringstream log;
  auto result = loop::EvaluateModel(config, "", log, nullptr);
  ASSERT_FALSE(result.ok());
  EXPECT_NE(result.status().message().find("data.eval_files"),
            std::string::npos);
}

// Periodic evaluation logs eval_ lines to metrics.jsonl and ends with an
// evaluation after the last step; the exported policy evaluates to the same
// numbers through `prefopt eval`'s path.
TEST(TrainerEvaluationTest, EvaluatesPeriodicallyAndExportsTheFinalPolicy) {
  const std::string export_dir =
      absl::StrCat(std::getenv("TEST_TMPDIR"), "/exported");
  const TrainConfig config =
      LoadConfig("periodic", WorkspacePath("tests/fixtures/gpt2/pairs.jsonl"),
                 absl::StrCat("max_steps: 5\neval_every_steps: 2\n",
                              "export_hf_path: '", export_dir, "'\n"));
  std::ostringstream log;
  auto trainer = loop::Trainer::Create(config, log);
  ASSERT_TRUE(trainer.ok()) << trainer.status();
  ASSERT_TRUE((*trainer)->Run().ok());
  EXPECT_NE(log.str().find("eval at step 2:"), std::string::npos) << log.str();

  std::vector<int> eval_steps;
  std::ifstream metrics(config.run_dir() + "/metrics.jsonl");
  for (std::string line; std::getline(metrics, line);) {
    const nlohmann::json j = nlohmann::json::parse(line);
    if (j.contains("eval_loss")) {
      eval_steps.push_back(j["step"].get<int>());
      EXPECT_TRUE(j.contains("eval_ranking/idealized_accuracy"));
      EXPECT_FALSE(j.contains("loss"));
    }
  }
  EXPECT_EQ(eval_steps, (std::vector<int>{2, 4, 5}));

  const nlohmann::json eval_json = ReadJson(config.run_dir() + "/eval.json");
  EXPECT_EQ(eval_json["step"].get<int>(), 5);
  EXPECT_EQ(eval_json["examples"].get<int>(), 6);
  const auto& last = (*trainer)->last_eval();
  EXPECT_DOUBLE_EQ(eval_json["loss"].get<double>(), last.at("loss"));

  std::ifstream report(config.run_dir() + "/report.html");
  const std::string html((std::istreambuf_iterator<char>(report)),
                         std::istreambuf_iterator<char>());
  EXPECT_NE(html.find("ranking/idealized_accuracy"), std::string::npos);

  // The exported folder, evaluated against the same reference. num_tokens
  // counts the run's training tokens: the model alone has none.
  EXPECT_GT(last.at("num_tokens"), 0.0);
  const auto exported = Evaluate(config, export_dir);
  for (const auto& [name, value] : last) {
    if (name == "num_tokens") continue;
    EXPECT_NEAR(exported.at(name), value, 1e-5 * std::max(1.0, std::abs(value)))
        << name;
  }
}

TEST(TrainerEvaluationTest, RefusesAnExportFolderThatHoldsFiles) {
  const std::string export_dir =
      absl::StrCat(std::getenv("TEST_TMPDIR"), "/occupied");
  std::filesystem::create_directories(export_dir);
  std::ofstream(export_dir + "/keep.txt") << "mine";
  const TrainConfig config = LoadConfig(
      "occupied", WorkspacePath("tests/fixtures/gpt2/pairs.jsonl"),
      absl::StrCat("max_steps: 1\nexport_hf_path: '", export_dir, "'\n"));
  std::ostringstream log;
  auto trainer = loop::Trainer::Create(config, log);
  ASSERT_FALSE(trainer.ok());
  EXPECT_NE(trainer.status().message().find("export_hf_path: " + export_dir +
                                            " exists and is not empty"),
            std::string::npos)
      << trainer.status();
}

}  // namespace
}  // namespace prefopt
