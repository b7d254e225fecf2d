// MaPO masks against the official SparsePO code's math
// (tests/fixtures/objectives/mapo_gpt2.json, generate_mapo_fixture.py there):
// the official GPT-2 activation groups, captured by the reference decoder and
// grouped by loop::MapoGroupOf, rescaled by objectives::MapoMask, give the
// official masks of the tiny fixture GPT-2 to 1e-6; and SparsePO with MaPO
// masks through loop::Trainer gives the official loss and metrics, with both
// terms masked and with mask_on_reward / mask_on_kl alone.
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "kernels/cpu/cpu_backend.h"
#include "tests/fixture_util.h"
#include "trainer/config/config_loader.h"
#include "trainer/io/hf_config.h"
#include "trainer/io/weight_store.h"
#include "trainer/loop/sparsepo_step.h"
#include "trainer/loop/trainer.h"
#include "trainer/model/decoder.h"
#include "trainer/objectives/mapo_masks.h"

namespace prefopt {
namespace {

using Json = nlohmann::json;
using objectives::MapoGroup;

const Json& Fixture() {
  static const Json* j = [] {
    std::ifstream in(
        testing::WorkspacePath("tests/fixtures/objectives/mapo_gpt2.json"));
    auto* out = new Json;
    in >> *out;
    return out;
  }();
  return *j;
}

std::vector<int32_t> Ids(const Json& j) {
  return j.get<std::vector<int32_t>>();
}

// The official sequence order: every pair's chosen, then every rejected.
std::vector<std::pair<std::vector<int32_t>, std::vector<int32_t>>> Sequences() {
  std::vector<std::pair<std::vector<int32_t>, std::vector<int32_t>>> out;
  for (const char* key : {"chosen_ids", "rejected_ids"}) {
    for (const Json& p : Fixture()["pairs"]) {
      out.push_back({Ids(p["prompt_ids"]), Ids(p[key])});
    }
  }
  return out;
}

// Per captured map of one sequence: its group and the response rows' means
// over the width.
class MapRecorder : public model::ActivationObserver {
 public:
  MapRecorder(io::ModelSpec::Arch arch, int first_row, int rows)
      : arch_(arch), first_row_(first_row), rows_(rows) {}

  void Observe(const model::ActivationView& v) override {
    const std::optional<MapoGroup> group = loop::MapoGroupOf(v.kind, arch_);
    if (!group) return;
    groups.push_back(*group);
    std::vector<float>& s = scores.emplace_back();
    for (int t = 0; t < rows_; ++t) {
      const float* row =
          v.data + static_cast<size_t>(first_row_ + t) * v.stride;
      double sum = 0;
      for (int h = 0; h < v.width; ++h) sum += row[h];
      s.push_back(static_cast<float>(sum / v.width));
    }
  }

  std::vector<MapoGroup> groups;
  std::vector<std::vector<float>> scores;

 private:
  io::ModelSpec::Arch arch_;
  int first_row_, rows_;
};

TEST(MapoFixture, MasksMatchTheOfficialCode) {
  const std::string dir =
      testing::WorkspacePath("tests/fixtures/gpt2/reference");
  auto spec = io::ReadHfConfig(dir);
  ASSERT_TRUE(spec.ok()) << spec.status();
  auto store = io::WeightStore::Open(dir);
  ASSERT_TRUE(store.ok()) << store.status();
  kernels::CpuBackend backend;
  auto reference = model::Decoder::Create(*spec, &backend, {64, 64, 1}, false);
  ASSERT_TRUE(reference.ok()) << reference.status();
  ASSERT_TRUE((*reference)->LoadHf(*store).ok());
  model::Decoder& d = **reference;
  const int C = d.hidden_size(), V = d.vocab_size();

  const auto sequences = Sequences();
  for (const auto& [case_name, c] : Fixture()["cases"].items()) {
    // The official selection may name mlp, which GPT-2 does not capture.
    std::vector<MapoGroup> groups;
    for (const nlohmann::json& name : c["groups"]) {
      const std::string g = name.get<std::string>();
      if (g == "attn") groups.push_back(MapoGroup::kAttn);
      if (g == "resid") groups.push_back(MapoGroup::kResid);
      if (g == "logits") groups.push_back(MapoGroup::kLogits);
    }
    for (size_t s = 0; s < sequences.size(); ++s) {
      const auto& [prompt, response] = sequences[s];
      const int rows = static_cast<int>(response.size());
      const int first = static_cast<int>(prompt.size()) - 1;
      model::PackedBatch batch;
      batch.AddSequence(prompt, response);
      MapRecorder rec(spec->arch, first, rows);
      d.set_observer(&rec);
      const float* hidden = d.Forward(batch);
      d.set_observer(nullptr);
      // The logits map: the mean reference logit of each response row.
      std::vector<float> logits(rows);
      for (int t = 0; t < rows; ++t) {
        double sum = 0;
        for (int v = 0; v < V; ++v) {
          for (int h = 0; h < C; ++h) {
            sum += static_cast<double>(
                       hidden[static_cast<size_t>(first + t) * C + h]) *
                   d.output_embedding()[static_cast<size_t>(v) * C + h];
          }
        }
        logits[t] = static_cast<float>(sum / V);
      }
      std::vector<objectives::MapoActivation> maps;
      for (size_t i = 0; i < rec.groups.size(); ++i) {
        maps.push_back({rec.groups[i], rec.scores[i].data(), 1, 1});
      }
      maps.push_back({MapoGroup::kLogits, logits.data(), 1, 1});
      std::vector<float> mask(rows);
      ASSERT_TRUE(objectives::MapoMask(maps, groups, rows, mask.data()).ok());
      const std::vector<double> want = c["masks"][s];
      ASSERT_EQ(want.size(), mask.size());
      for (int t = 0; t < rows; ++t) {
        EXPECT_NEAR(mask[t], want[t], 1e-6)
            << case_name << ", sequence " << s << ", token " << t;
      }
    }
  }
}

// A MaPO run over the fixture pairs with the fixture's policy and reference;
// `sparsepo` adds to the objective's fields.
absl::StatusOr<std::unique_ptr<loop::Trainer>> MakeTrainer(
    const std::string& name, const std::string& sparsepo) {
  std::string pairs;
  for (const Json& p : Fixture()["pairs"]) pairs += p.dump() + "\n";
  const std::string text = absl::StrCat(
      "model { hf_path: '",
      testing::WorkspacePath("tests/fixtures/gpt2/policy"),
      "' reference_hf_path: '",
      testing::WorkspacePath("tests/fixtures/gpt2/reference"), "' }\n",
      "data { train_files: '", testing::WriteTempFile(name + ".jsonl", pairs),
      "' max_length: 64 }\n", "objective { sparsepo { mask: MAPO beta: ",
      Fixture()["beta"].get<double>(), " ", sparsepo, " } }\n",
      "optimizer { lr: 1e-3 }\n",
      "batch { micro_batch_size: 4 global_batch_size: 4 }\n",
      "max_steps: 1\nseed: 3\nrun_dir: '", std::getenv("TEST_TMPDIR"), "/",
      name, "'\n");
  auto config = config::LoadTrainConfig(
      testing::WriteTempFile(name + ".textproto", text), {});
  if (!config.ok()) return config.status();
  std::ostringstream log;
  return loop::Trainer::Create(*config, log);
}

class MapoLoss : public ::testing::TestWithParam<std::string> {};

TEST_P(MapoLoss, MatchesTheOfficialCode) {
  const Json& c = Fixture()["losses"][GetParam()];
  auto trainer = MakeTrainer(
      "mapo_" + GetParam(),
      absl::StrCat(
          "mask_on_reward: ",
          c["mask_on_reward"].get<bool>() ? "true" : "false",
          " mask_on_kl: ", c["mask_on_kl"].get<bool>() ? "true" : "false"));
  ASSERT_TRUE(trainer.ok()) << trainer.status();
  std::map<std::string, double> m = (*trainer)->ForwardBackward({0, 1, 2, 3});
  for (const auto& [metric, value] : c["metrics"].items()) {
    ASSERT_TRUE(m.count(metric)) << metric;
    const double want = value.get<double>();
    EXPECT_NEAR(m[metric], want, 2e-5 * std::max(1.0, std::fabs(want)))
        << metric;
  }
}

// The official GPT-2 block captures no MLP activation, so the group is
// refused rather than silently empty.
TEST(MapoFixture, Gpt2HasNoMlpGroup) {
  auto trainer = MakeTrainer("mapo_mlp", "mapo_groups: [MLP, ATTN]");
  ASSERT_FALSE(trainer.ok());
  EXPECT_NE(trainer.status().message().find("MLP has no activations on GPT-2"),
            std::string::npos)
      << trainer.status();
}

INSTANTIATE_TEST_SUITE_P(Flags, MapoLoss,
                         ::testing::Values("both", "reward_only", "kl_only"),
                         [](const ::testing::TestParamInfo<std::string>& info) {
                           return info.param;
                         });

}  // namespace
}  // namespace prefopt
