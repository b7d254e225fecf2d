// Helpers for tests that drive loop::Trainer step by step and compare runs
// bitwise: an uninterrupted run against a resumed one, one setting against
// another that must not change the arithmetic.
#ifndef PREFOPT_TESTS_TRAINER_STEPS_H_
#define PREFOPT_TESTS_TRAINER_STEPS_H_

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "trainer/loop/trainer.h"

namespace prefopt::testing {

// The trainer of the config file `config_path` with `overrides` (--set
// syntax), its log discarded.
absl::StatusOr<std::unique_ptr<loop::Trainer>> CreateTrainer(
    const std::string& config_path,
    const std::vector<std::string>& overrides = {});
// The same, failing the test (and returning null) where it is an error.
std::unique_ptr<loop::Trainer> MakeTrainer(
    const std::string& config_path,
    const std::vector<std::string>& overrides = {});

// Every metric of one step but tokens_per_second, which differs between runs.
using StepMetrics = std::map<std::string, double>;

// Steps `trainer` until steps_done() reaches `until`; a failing step fails the
// test and ends the run.
std::vector<StepMetrics> RunSteps(loop::Trainer& trainer, int until);

// The policy's trainable parameters (the adapters with LoRA).
std::vector<float> TrainableParams(const loop::Trainer& trainer);

// The policy's base weights on the host (a bf16 base widened).
std::vector<float> BaseParams(const loop::Trainer& trainer);

bool Bitwise(const std::vector<float>& a, const std::vector<float>& b);

// Every metric of every step bitwise equal; failures name the step, counted
// from `first_step` + 1.
void ExpectBitwiseEqual(const std::vector<StepMetrics>& a,
                        const std::vector<StepMetrics>& b, int first_step = 0);

}  // namespace prefopt::testing

#endif  // PREFOPT_TESTS_TRAINER_STEPS_H_
