// Generation from a prompt with a decoder and a key/value cache: the prompt
// is run once, then each new token costs one incremental forward of one row
// (Decoder::ForwardIncremental), not a pass over the whole sequence. Greedy
// decoding, temperature sampling and nucleus (top-p) sampling.
#ifndef PREFOPT_TRAINER_MODEL_GENERATION_H_
#define PREFOPT_TRAINER_MODEL_GENERATION_H_

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "trainer/model/decoder.h"
#include "trainer/util/rng.h"

namespace prefopt::model {

struct GenerationOptions {
  int max_new_tokens = 64;  // >= 1
  // 0: greedy, the most likely token (the lowest id on ties, as
  // torch.argmax). > 0: a sample from softmax(logits / temperature).
  double temperature = 0.0;
  // Sampling draws from the smallest set of most likely tokens whose
  // probabilities sum to at least top_p, in (0, 1]; 1 keeps every token.
  double top_p = 1.0;
  uint64_t seed = 0;  // of the sampling generator
  // Generation ends after one of these tokens (which is kept in the output).
  std::vector<int32_t> stop_ids;
};

// The next token from a row of logits, as GenerationOptions describes;
// `rng` is used only when temperature > 0.
int32_t PickToken(absl::Span<const float> logits, double temperature,
                  double top_p, util::Rng* rng);

class Generator {
 public:
  // Generates with `decoder` (not owned; it must outlive the generator).
  // A prompt and its new tokens may hold up to capacity().max_seq_len tokens;
  // prompts are run capacity().max_rows tokens at a time.
  static absl::StatusOr<std::unique_ptr<Generator>> Create(Decoder* decoder);
  ~Generator();
  Generator(const Generator&) = delete;
  Generator& operator=(const Generator&) = delete;

  // The tokens that follow `prompt` (the prompt not included): up to
  // options.max_new_tokens, fewer when a stop id comes first. Errors name the
  // problem: an empty prompt, an id outside the vocabulary, a prompt that
  // leaves no room for max_new_tokens, options out of range.
  absl::StatusOr<std::vector<int32_t>> Generate(
      absl::Span<const int32_t> prompt, const GenerationOptions& options);

 private:
  Generator(Decoder* decoder, std::unique_ptr<KvCache> cache);
  // The logits of the last row of `hidden` (rows of the last forward) into
  // host_logits_.
  void LastRowLogits(const float* hidden, int rows);

  Decoder* decoder_;
  std::unique_ptr<KvCache> cache_;
  float* logits_;  // [V], backend memory
  std::vector<float> host_logits_;
};

}  // namespace prefopt::model

#endif  // PREFOPT_TRAINER_MODEL_GENERATION_H_
