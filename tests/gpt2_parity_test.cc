// GPT-2 against transformers: logits, per-token log-probs, the causal-LM loss
// and every parameter gradient of tests/fixtures/gpt2/forward.* (produced by
// GPT2LMHeadModel on the CPU in fp32), plus the sharded, bf16 and fp16 copies
// of the same weights; and the chunked output layer's per-token log Σ p² and
// entropy against TRL's fused LM head (tests/fixtures/gpt2/wpo_*.json).
#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>

#include "gtest/gtest.h"
#include "kernels/cpu/cpu_backend.h"
#include "tests/fixture_util.h"
#include "trainer/io/hf_config.h"
#include "trainer/io/safetensors.h"
#include "trainer/io/weight_store.h"
#include "trainer/model/decoder.h"
#include "trainer/objectives/output_layer.h"

namespace prefopt {
namespace {

using testing::RelativeL2;
using testing::TensorInHfLayout;

const char kDir[] = "tests/fixtures/gpt2/";

std::unique_ptr<model::Decoder> LoadPolicy(kernels::Backend* backend,
                                           const std::string& folder,
                                           const model::Capacity& cap,
                                           bool trainable) {
  auto spec = io::ReadHfConfig(kDir + folder);
  EXPECT_TRUE(spec.ok()) << spec.status();
  auto store = io::WeightStore::Open(kDir + folder);
  EXPECT_TRUE(store.ok()) << store.status();
  auto d = model::Decoder::Create(*spec, backend, cap, trainable);
  EXPECT_TRUE(d.ok()) << d.status();
  absl::Status s = (*d)->LoadHf(*store);
  EXPECT_TRUE(s.ok()) << s;
  return *std::move(d);
}

TEST(Gpt2Parity, MatchesTransformersForwardLossAndGradients) {
  kernels::CpuBackend backend;
  auto fwd =
      io::SafetensorsFile::Open(std::string(kDir) + "forward.safetensors");
  ASSERT_TRUE(fwd.ok()) << fwd.status();
  nlohmann::json meta;
  std::ifstream(std::string(kDir) + "forward.json") >> meta;

  model::PackedBatch batch;
  std::vector<std::vector<int32_t>> seqs;
  for (int i = 0; i < 3; ++i) {
    auto ids = fwd->ReadInt("ids_" + std::to_string(i));
    ASSERT_TRUE(ids.ok()) << ids.status();
    seqs.emplace_back(ids->begin(), ids->end());
    batch.AddSequence(seqs.back());
  }
  const model::Capacity cap{batch.rows(), 20, 3};
  auto decoder = LoadPolicy(&backend, "policy", cap, true);
  const int N = batch.rows(), C = decoder->hidden_size(),
            V = decoder->vocab_size();

  const float* hidden = decoder->Forward(batch);
  // Full logits, only for the comparison (training never materializes them).
  std::vector<float> logits(static_cast<size_t>(N) * V);
  backend.MatmulForward(logits.data(), hidden, decoder->output_embedding(),
                        nullptr, N, C, V);
  std::vector<objectives::ResponseSegment> segments;
  for (const auto& span : batch.spans) {
    segments.push_back({span.start, span.len - 1});
  }
  objectives::ChunkedOutputLayer output(&backend, N, C, V, /*chunk=*/5);
  const auto scores = output.Forward(hidden, decoder->output_embedding(),
                                     batch.tokens.data(), segments);
  int row = 0;
  double nll = 0;
  for (int i = 0; i < 3; ++i) {
    const auto span = batch.spans[i];
    auto ref_logits = fwd->ReadFloat("logits_" + std::to_string(i));
    ASSERT_TRUE(ref_logits.ok());
    std::vector<float> ours(logits.begin() + span.start * V,
                            logits.begin() + (span.start + span.len) * V);
    EXPECT_LT(RelativeL2(ours, *ref_logits), 1e-5)
        << "logits of sequence " << i;
    auto ref_logp = fwd->ReadFloat("logprobs_" + std::to_string(i));
    ASSERT_TRUE(ref_logp.ok());
    for (int t = 0; t < span.len - 1; ++t, ++row) {
      EXPECT_NEAR(output.row_logp()[row], (*ref_logp)[t],
                  1e-4 * std::abs((*ref_logp)[t]))
          << "sequence " << i << " position " << t;
    }
    nll -= scores[i].logp;
  }
  const double total = meta["num_predicted_tokens"].get<double>();
  const double loss = nll / total;
  EXPECT_NEAR(loss, meta["loss"].get<double>(),
              1e-5 * meta["loss"].get<double>());

  // Backward of the mean NLL: G_t = 1/total for every predicted token.
  std::vector<float> coef(row, static_cast<float>(1.0 / total));
  backend.Zero(decoder->dhidden(), static_cast<size_t>(N) * C);
  output.Backward(decoder->dhidden(), decoder->output_embedding_grad(), hidden,
                  decoder->output_embedding(), batch.tokens.data(), segments,
                  coef);
  decoder->Backward(batch);
  for (const model::ParamTensor& t : decoder->layout().tensors()) {
    auto ref = fwd->ReadFloat("grad." + t.name);
    ASSERT_TRUE(ref.ok()) << ref.status();
    EXPECT_LT(RelativeL2(TensorInHfLayout(t, decoder->grads()), *ref), 1e-4)
        << "gradient of " << t.name;
  }
}

// TRL 1.16's DPOTrainer with use_weighting=True, on the six pairs of
// pairs.jsonl: its per-token log Σ_v p_v² (WPO's weights) against
// row_log_sum_sq_probs(), and its per-token entropy summed per sequence
// against SequenceScores::entropy_sum. Both sides are fp32 on the CPU;
// the tolerance is 1e-5 relative (1e-6 absolute).
TEST(Gpt2Parity, OutputLayerLogSumSqProbsAndEntropyMatchTrl) {
  nlohmann::json trl;
  std::ifstream(std::string(kDir) + "wpo_log_sum_sq_probs.json") >> trl;
  ASSERT_EQ(trl["pairs"].size(), 6u);
  // Sequences in data::BuildBatch order: each pair's chosen, then rejected.
  model::PackedBatch batch;
  std::vector<objectives::ResponseSegment> segments;
  std::vector<double> want_sq, want_entropy_sums;
  std::vector<std::vector<int32_t>> seqs;
  for (const auto& pair : trl["pairs"]) {
    const auto prompt = pair["prompt_ids"].get<std::vector<int32_t>>();
    for (const char* side : {"chosen", "rejected"}) {
      std::vector<int32_t> ids = prompt;
      const auto resp =
          pair[std::string(side) + "_ids"].get<std::vector<int32_t>>();
      ids.insert(ids.end(), resp.begin(), resp.end());
      seqs.push_back(ids);
      segments.push_back({batch.rows() + static_cast<int>(prompt.size()) - 1,
                          static_cast<int>(resp.size())});
      batch.AddSequence(seqs.back());
      for (double x : pair[std::string(side) + "_log_sum_sq_probs"]) {
        want_sq.push_back(x);
      }
      double entropy_sum = 0;
      for (double x : pair[std::string(side) + "_entropy"]) entropy_sum += x;
      want_entropy_sums.push_back(entropy_sum);
    }
  }
  kernels::CpuBackend backend;
  const model::Capacity cap{batch.rows(), 20, 12};
  auto decoder = LoadPolicy(&backend, "policy", cap, false);
  const int N = batch.rows(), C = decoder->hidden_size(),
            V = decoder->vocab_size();
  const float* hidden = decoder->Forward(batch);
  objectives::ChunkedOutputLayer output(&backend, N, C, V, /*chunk=*/5);
  const auto scores =
      output.Forward(hidden, decoder->output_embedding(), batch.tokens.data(),
                     segments, /*log_sum_sq_probs=*/true);
  ASSERT_EQ(output.row_log_sum_sq_probs().size(), want_sq.size());
  for (size_t r = 0; r < want_sq.size(); ++r) {
    EXPECT_NEAR(output.row_log_sum_sq_probs()[r], want_sq[r],
                std::max(1e-6, 1e-5 * std::abs(want_sq[r])))
        << "response row " << r;
  }
  for (size_t i = 0; i < scores.size(); ++i) {
    EXPECT_NEAR(scores[i].entropy_sum, want_entropy_sums[i],
                std::max(1e-6, 1e-5 * want_entropy_sums[i]))
        << "sequence " << i;
  }
  // Not asked for: not computed.
  output.Forward(hidden, decoder->output_embedding(), batch.tokens.data(),
                 segments);
  EXPECT_TRUE(output.row_log_sum_sq_probs().empty());
}

TEST(Gpt2Parity, ShardedAndHalfPrecisionFoldersLoadTheSameWeights) {
  kernels::CpuBackend backend;
  const model::Capacity cap{8, 8, 1};
  auto full = LoadPolicy(&backend, "policy", cap, false);
  auto sharded = LoadPolicy(&backend, "policy_sharded", cap, false);
  auto bf16 = LoadPolicy(&backend, "policy_bf16", cap, false);
  auto fp16 = LoadPolicy(&backend, "policy_fp16", cap, false);
  const size_t n = full->layout().total();
  for (size_t i = 0; i < n; ++i) {
    ASSERT_EQ(full->params()[i], sharded->params()[i]) << "float " << i;
    const float x = full->params()[i];
    // transformers' .to(bfloat16) rounds to nearest even.
    EXPECT_EQ(bf16->params()[i], io::Bf16ToFloat(io::FloatToBf16(x)))
        << "float " << i;
    EXPECT_EQ(fp16->params()[i], io::Fp16ToFloat(io::FloatToFp16(x)))
        << "float " << i;
  }
}

}  // namespace
}  // namespace prefopt
