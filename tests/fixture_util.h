// Helpers for tests that compare against the committed reference fixtures
// (tests/fixtures/, produced by transformers and TRL).
#ifndef PREFOPT_TESTS_FIXTURE_UTIL_H_
#define PREFOPT_TESTS_FIXTURE_UTIL_H_

#include <string>
#include <vector>

#include "nlohmann/json.hpp"
#include "trainer/io/safetensors.h"
#include "trainer/model/decoder.h"
#include "trainer/model/param_layout.h"

namespace prefopt::testing {

// Absolute path of a file under the workspace root (tests run there).
std::string WorkspacePath(const std::string& relative);

// A tensor of the decoder's buffer `base` (params or grads), converted to the
// Hugging Face layout (Conv1D weights transposed back to [in, out]).
std::vector<float> TensorInHfLayout(const model::ParamTensor& t,
                                    const float* base);

// ||a − b|| / max(||b||, tiny): the per-tensor relative error used for
// gradients and weights.
double RelativeL2(const std::vector<float>& a, const std::vector<float>& b);

// Expects every weight of the GPT-2 decoder `model` to match the tensor of
// `expected` named `prefix` + its Hugging Face name within relative L2 1e-5,
// after `steps` AdamW steps at learning rate `lr` on both sides. The
// attention key bias is the exception: its gradient is exactly zero (adding
// q·b_k to every score of a row leaves the softmax unchanged), so both sides
// move it by rounding noise that Adam normalizes to steps of up to ~lr; it is
// checked to within steps × lr, the query and value biases exactly.
void ExpectGpt2WeightsMatch(const model::Decoder& model,
                            const io::SafetensorsFile& expected, int steps,
                            double lr, const std::string& prefix = "");

// The JSON document in `path` (null when it cannot be read or parsed, which
// the caller's first lookup then reports).
nlohmann::json ReadJson(const std::string& path);

// Writes `text` to a fresh file under TEST_TMPDIR and returns its path.
std::string WriteTempFile(const std::string& name, const std::string& text);

// Whether `name` is TRL's num_tokens, the running count of training tokens
// that only an optimizer step logs (Trainer::Step; tests/dpo_trl_parity_test.cc
// compares it), not one forward-backward or an evaluation of its own; the DPO
// fixtures' other metrics are the ones both log.
bool IsTrlOnlyDpoMetric(const std::string& name);

}  // namespace prefopt::testing

#endif  // PREFOPT_TESTS_FIXTURE_UTIL_H_
