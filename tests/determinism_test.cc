// Same config and seed ⇒ the same losses and weights, bit for bit, on the CPU
// path (docs/architecture.md "Determinism"); a different seed ⇒ different
// weights.
#include <cstring>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "tests/fixture_util.h"
#include "trainer/config/config_loader.h"
#include "trainer/loop/trainer.h"

namespace prefopt {
namespace {

struct RunResult {
  std::vector<double> losses;
  std::vector<float> params;
};

RunResult RunFromScratch(const std::string& name, int seed) {
  const std::string text = absl::StrCat(
      "model { architecture: GPT2 vocab_size: 101 n_positions: 32 n_embd: 32 "
      "n_layer: 2 n_head: 4 }\n",
      "data { train_files: '",
      testing::WorkspacePath("tests/fixtures/gpt2/pairs.jsonl"),
      "' max_length: 32 shuffle: true }\n", "objective { dpo { beta: 0.1 } }\n",
      "optimizer { lr: 1e-3 weight_decay: 0.01 max_grad_norm: 1.0 }\n",
      "batch { micro_batch_size: 1 global_batch_size: 2 }\n",
      "num_epochs: 2\nseed: ", seed, "\nrun_dir: '", std::getenv("TEST_TMPDIR"),
      "/", name, "'\n");
  auto config = config::LoadTrainConfig(
      testing::WriteTempFile(name + ".textproto", text), {});
  EXPECT_TRUE(config.ok()) << config.status();
  std::ostringstream log;
  auto trainer = loop::Trainer::Create(*config, log);
  EXPECT_TRUE(trainer.ok()) << trainer.status();
  RunResult r;
  while ((*trainer)->steps_done() < (*trainer)->total_steps()) {
    auto m = (*trainer)->Step();
    EXPECT_TRUE(m.ok()) << m.status();
    r.losses.push_back((*m)["loss"]);
  }
  const model::Decoder& p = (*trainer)->policy();
  r.params.assign(p.params(), p.params() + p.layout().total());
  return r;
}

TEST(Determinism, TwoRunsAreBitwiseEqual) {
  const RunResult a = RunFromScratch("a", 7);
  const RunResult b = RunFromScratch("b", 7);
  ASSERT_EQ(a.losses.size(), 6u);
  ASSERT_EQ(a.losses.size(), b.losses.size());
  for (size_t i = 0; i < a.losses.size(); ++i) {
    EXPECT_EQ(std::memcmp(&a.losses[i], &b.losses[i], sizeof(double)), 0)
        << "loss of step " << i << ": " << a.losses[i] << " vs " << b.losses[i];
  }
  ASSERT_EQ(a.params.size(), b.params.size());
  EXPECT_EQ(std::memcmp(a.params.data(), b.params.data(),
                        a.params.size() * sizeof(float)),
            0);
  const RunResult c = RunFromScratch("c", 8);
  EXPECT_NE(std::memcmp(a.params.data(), c.params.data(),
                        a.params.size() * sizeof(float)),
            0);
}

}  // namespace
}  // namespace prefopt
