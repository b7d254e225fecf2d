#include "tests/trainer_steps.h"

#include <cstring>
#include <sstream>

#include "gtest/gtest.h"
#include "trainer/config/config_loader.h"
#include "trainer/model/decoder.h"

namespace prefopt::testing {

absl::StatusOr<std::unique_ptr<loop::Trainer>> CreateTrainer(
    const std::string& config_path, const std::vector<std::string>& overrides) {
  auto config = config::LoadTrainConfig(config_path, overrides);
  if (!config.ok()) return config.status();
  static std::ostringstream* log = new std::ostringstream;
  return loop::Trainer::Create(*config, *log);
}

std::unique_ptr<loop::Trainer> MakeTrainer(
    const std::string& config_path, const std::vector<std::string>& overrides) {
  auto trainer = CreateTrainer(config_path, overrides);
  EXPECT_TRUE(trainer.ok()) << trainer.status();
  return trainer.ok() ? *std::move(trainer) : nullptr;
}

std::vector<StepMetrics> RunSteps(loop::Trainer& trainer, int until) {
  std::vector<StepMetrics> steps;
  while (trainer.steps_done() < until) {
    auto m = trainer.Step();
    EXPECT_TRUE(m.ok()) << m.status();
    if (!m.ok()) break;
    m->erase("tokens_per_second");
    steps.push_back(*m);
  }
  return steps;
}

std::vector<float> TrainableParams(const loop::Trainer& trainer) {
  const model::Decoder& p = trainer.policy();
  return std::vector<float>(p.params(), p.params() + p.layout().total());
}

std::vector<float> BaseParams(const loop::Trainer& trainer) {
  const model::Decoder& p = trainer.policy();
  std::vector<float> base(p.base_layout().total());
  p.CopyBaseToHost(base.data());
  return base;
}

bool Bitwise(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() &&
         std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

void ExpectBitwiseEqual(const std::vector<StepMetrics>& a,
                        const std::vector<StepMetrics>& b, int first_step) {
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    ASSERT_EQ(a[i].size(), b[i].size());
    for (const auto& [name, value] : a[i]) {
      const double other = b[i].at(name);
      EXPECT_EQ(std::memcmp(&value, &other, sizeof(double)), 0)
          << "step " << first_step + i + 1 << " " << name << ": " << value
          << " vs " << other;
    }
  }
}

}  // namespace prefopt::testing
