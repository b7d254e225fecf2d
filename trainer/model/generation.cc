#include "trainer/model/generation.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace prefopt::model {

int32_t PickToken(absl::Span<const float> logits, double temperature,
                  double top_p, util::Rng* rng) {
  const int V = static_cast<int>(logits.size());
  if (temperature <= 0.0) {
    // The first maximum, as torch.argmax and Hugging Face's greedy search.
    return static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) -
                                logits.begin());
  }
  const double max_logit = *std::max_element(logits.begin(), logits.end());
  std::vector<double> weight(V);
  double total = 0.0;
  for (int v = 0; v < V; ++v) {
    weight[v] = std::exp((logits[v] - max_logit) / temperature);
    total += weight[v];
  }
  std::vector<int32_t> order(V);
  std::iota(order.begin(), order.end(), 0);
  int kept = V;
  double kept_weight = total;
  if (top_p < 1.0) {
    // Most likely first; equal weights keep id order, so the nucleus does not
    // depend on the sort's implementation.
    std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) {
      return weight[a] > weight[b];
    });
    kept_weight = 0.0;
    kept = 0;
    while (kept < V && kept_weight < top_p * total) {
      kept_weight += weight[order[kept++]];
    }
  }
  double u = rng->Uniform() * kept_weight;
  for (int i = 0; i < kept; ++i) {
    u -= weight[order[i]];
    if (u < 0.0) return order[i];
  }
  // Rounding left u at or just above 0 after the last kept token.
  return order[kept - 1];
}

absl::StatusOr<std::unique_ptr<Generator>> Generator::Create(Decoder* decoder) {
  auto cache = decoder->NewKvCache(decoder->capacity().max_seq_len);
  if (!cache.ok()) return cache.status();
  return std::unique_ptr<Generator>(new Generator(decoder, *std::move(cache)));
}

Generator::Generator(Decoder* decoder, std::unique_ptr<KvCache> cache)
    : decoder_(decoder),
      cache_(std::move(cache)),
      logits_(decoder->backend()->Alloc(decoder->vocab_size())),
      host_logits_(decoder->vocab_size()) {}

Generator::~Generator() { decoder_->backend()->Free(logits_); }

void Generator::LastRowLogits(const float* hidden, int rows) {
  const int C = decoder_->hidden_size(), V = decoder_->vocab_size();
  kernels::Backend& b = *decoder_->backend();
  b.MatmulForward(logits_, hidden + static_cast<size_t>(rows - 1) * C,
                  decoder_->output_embedding(), nullptr, 1, C, V);
  b.CopyToHost(host_logits_.data(), logits_, V);
}

absl::StatusOr<std::vector<int32_t>> Generator::Generate(
    absl::Span<const int32_t> prompt, const GenerationOptions& options) {
  const int V = decoder_->vocab_size();
  if (prompt.empty()) return absl::InvalidArgumentError("the prompt is empty");
  for (size_t i = 0; i < prompt.size(); ++i) {
    if (prompt[i] < 0 || prompt[i] >= V) {
      return absl::InvalidArgumentError(
          absl::StrCat("prompt token ", i, " is ", prompt[i],
                       ", outside the model's vocabulary [0, ", V, ")"));
    }
  }
  if (options.max_new_tokens < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "max_new_tokens must be >= 1, got ", options.max_new_tokens));
  }
  if (!(options.temperature >= 0.0) || !std::isfinite(options.temperature)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "temperature must be a finite number >= 0, got ", options.temperature));
  }
  if (!(options.top_p > 0.0 && options.top_p <= 1.0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("top_p must be in (0, 1], got ", options.top_p));
  }
  const int64_t length =
      static_cast<int64_t>(prompt.size()) + options.max_new_tokens;
  if (length > cache_->max_len()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "the prompt (", prompt.size(), " tokens) and max_new_tokens (",
        options.max_new_tokens, ") make ", length, " tokens; at most ",
        cache_->max_len(), " fit (the decoder's capacity)"));
  }

  cache_->Clear();
  util::Rng rng(options.seed);
  const int chunk = decoder_->capacity().max_rows;
  const float* hidden = nullptr;
  int rows = 0;
  for (size_t begin = 0; begin < prompt.size(); begin += chunk) {
    rows = static_cast<int>(std::min<size_t>(chunk, prompt.size() - begin));
    hidden =
        decoder_->ForwardIncremental(prompt.subspan(begin, rows), cache_.get());
  }
  std::vector<int32_t> generated;
  while (true) {
    LastRowLogits(hidden, rows);
    const int32_t next =
        PickToken(host_logits_, options.temperature, options.top_p, &rng);
    generated.push_back(next);
    const bool stop =
        std::find(options.stop_ids.begin(), options.stop_ids.end(), next) !=
        options.stop_ids.end();
    if (stop || static_cast<int>(generated.size()) == options.max_new_tokens) {
      return generated;
    }
    hidden = decoder_->ForwardIncremental(absl::MakeConstSpan(&next, 1),
                                          cache_.get());
    rows = 1;
  }
}

}  // namespace prefopt::model
