// SFT, PRIOR, implicit-reward SFT and SparsePO against PyTorch autograd on full
// logits (tests/fixtures/objectives/, made by generate_objective_fixtures.py).
// Here the logits go through the path the trainer takes: per-token ℓ_t, ℓ̃_t,
// K_t (computed naively in double, then rounded to fp32 as the kernels
// return them), the modules' per-token coefficients, and the logit gradient
// rebuilt from those in the A/B form. Loss, every metric and every gradient
// must agree to 1e-5 relative.
#include <algorithm>
#include <cmath>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "trainer/objectives/implicit_sft.h"
#include "trainer/objectives/metric_sums.h"
#include "trainer/objectives/naive_logits.h"
#include "trainer/objectives/prior.h"
#include "trainer/objectives/sft.h"
#include "trainer/objectives/sparsepo.h"

namespace prefopt::objectives {
namespace {

using testing::LogitGrad;
using testing::NaiveRow;
using testing::NaiveRowOf;
using Json = nlohmann::json;

const Json& Fixture() {
  static const Json* j = [] {
    auto* out = new Json;
    std::ifstream f("tests/fixtures/objectives/objective_fixtures.json");
    EXPECT_TRUE(f.good()) << "fixture file missing";
    f >> *out;
    return out;
  }();
  return *j;
}

// One sequence of the fixture, reduced to what the trainer has per response
// token.
struct Sequence {
  int rows = 0;
  std::vector<int> labels, response_rows;
  std::vector<NaiveRow> naive;  // per response row
  std::vector<float> logp, ref_logp, kl, mask_reward, mask_kl;
  SequenceScores scores;
  double ref_logp_sum = 0;
};

Sequence LoadSequence(const Json& j) {
  Sequence s;
  s.labels = j["labels"].get<std::vector<int>>();
  const auto lam = j["loss_mask"].get<std::vector<int>>();
  s.rows = static_cast<int>(s.labels.size());
  for (int t = 0; t < s.rows; ++t) {
    if (lam[t] == 0) continue;
    s.response_rows.push_back(t);
    const NaiveRow r =
        NaiveRowOf(j["logits"][t].get<std::vector<double>>(),
                   j["ref_logits"][t].get<std::vector<double>>(), s.labels[t]);
    s.naive.push_back(r);
    s.logp.push_back(static_cast<float>(r.logp));
    s.ref_logp.push_back(static_cast<float>(r.ref_logp));
    s.kl.push_back(static_cast<float>(r.kl));
    // As ChunkedOutputLayer::Forward: double sums of the fp32 row values.
    s.scores.logp += s.logp.back();
    s.scores.logit_sum += static_cast<float>(r.logit_sum);
    s.scores.correct += r.correct;
    s.ref_logp_sum += s.ref_logp.back();
    if (j.contains("mask_reward")) {
      s.mask_reward.push_back(j["mask_reward"][t].get<float>());
      s.mask_kl.push_back(j["mask_kl"][t].get<float>());
    }
  }
  s.scores.tokens = static_cast<int>(s.response_rows.size());
  return s;
}

std::vector<Sequence> LoadSequences(const Json& list) {
  std::vector<Sequence> out;
  for (const Json& j : list) out.push_back(LoadSequence(j));
  return out;
}

void ExpectClose(double actual, double expected, const std::string& what) {
  EXPECT_NEAR(actual, expected, 1e-5 * std::fabs(expected) + 1e-7) << what;
}

void ExpectMetrics(const MetricSums& sums, const Json& expected) {
  const std::map<std::string, double> got = sums.Means();
  std::vector<std::string> names;
  for (const auto& [name, value] : got) names.push_back(name);
  std::vector<std::string> expected_names;
  for (const auto& [name, value] : expected.items()) {
    expected_names.push_back(name);
  }
  EXPECT_EQ(names, expected_names);
  for (const auto& [name, value] : expected.items()) {
    if (got.count(name)) ExpectClose(got.at(name), value.get<double>(), name);
  }
}

// A per-row quantity (gradient rows, or scalars per row) laid out like the
// fixture: `rows` entries per sequence, zero on prompt rows.
using Rows = std::vector<std::vector<double>>;

// Compares per-sequence [rows][width] (or [rows] when width is 0) arrays
// against the fixture's, relative to the largest expected magnitude.
void ExpectArrays(const std::vector<Rows>& actual, const Json& expected,
                  const std::string& what) {
  double scale = 0;
  for (const Json& seq : expected) {
    for (const Json& row : seq) {
      if (row.is_array()) {
        for (const Json& x : row)
          scale = std::max(scale, std::fabs(x.get<double>()));
      } else {
        scale = std::max(scale, std::fabs(row.get<double>()));
      }
    }
  }
  ASSERT_EQ(actual.size(), expected.size()) << what;
  for (size_t s = 0; s < actual.size(); ++s) {
    for (size_t t = 0; t < actual[s].size(); ++t) {
      const Json& row = expected[s][t];
      for (size_t v = 0; v < actual[s][t].size(); ++v) {
        const double e =
            row.is_array() ? row[v].get<double>() : row.get<double>();
        EXPECT_NEAR(actual[s][t][v], e, 1e-5 * scale)
            << what << " seq " << s << " row " << t << " entry " << v;
      }
    }
  }
}

// dz of every sequence from per-response-token coefficients (in sequence
// order, then token order).
std::vector<Rows> LogitGrads(const std::vector<Sequence>& seqs,
                             const std::vector<float>& coef_a,
                             const std::vector<float>& coef_b, int vocab) {
  std::vector<Rows> out;
  size_t i = 0;
  for (const Sequence& s : seqs) {
    Rows g(s.rows, std::vector<double>(vocab, 0.0));
    for (size_t j = 0; j < s.response_rows.size(); ++j, ++i) {
      const int t = s.response_rows[j];
      g[t] = LogitGrad(s.naive[j], s.labels[t], coef_a[i],
                       coef_b.empty() ? 0.0 : coef_b[i]);
    }
    out.push_back(std::move(g));
  }
  EXPECT_EQ(i, coef_a.size());
  return out;
}

// Per-token mask gradients scattered to full rows.
std::vector<Rows> MaskGrads(const std::vector<Sequence>& seqs,
                            const std::vector<float>& dmask) {
  std::vector<Rows> out;
  size_t i = 0;
  for (const Sequence& s : seqs) {
    Rows g(s.rows, std::vector<double>(1, 0.0));
    for (int t : s.response_rows) g[t][0] = dmask[i++];
    out.push_back(std::move(g));
  }
  EXPECT_EQ(i, dmask.size());
  return out;
}

int TotalTokens(const std::vector<Sequence>& seqs) {
  int k = 0;
  for (const Sequence& s : seqs) k += s.scores.tokens;
  return k;
}

int CountCases(const std::string& objective) {
  int n = 0;
  for (const Json& c : Fixture()["cases"]) n += c["objective"] == objective;
  return n;
}

TEST(ObjectiveFixture, Sft) {
  const int vocab = Fixture()["vocab"];
  const std::vector<Sequence> seqs = LoadSequences(Fixture()["demos"]);
  const int tokens = TotalTokens(seqs);
  ASSERT_EQ(CountCases("sft"), 1);
  for (const Json& c : Fixture()["cases"]) {
    if (c["objective"] != "sft") continue;
    MetricSums sums;
    std::vector<float> coef;
    double loss = 0;
    for (const Sequence& s : seqs)
      loss += SftSequence(s.scores, tokens, &sums, &coef);
    ExpectClose(loss / tokens, c["loss"], "loss");
    ExpectMetrics(sums, c["metrics"]);
    ExpectArrays(LogitGrads(seqs, coef, {}, vocab), c["grad_logits"], "dz");
  }
}

TEST(ObjectiveFixture, Prior) {
  const int vocab = Fixture()["vocab"];
  const std::vector<Sequence> seqs = LoadSequences(Fixture()["demos"]);
  const int tokens = TotalTokens(seqs);
  ASSERT_EQ(CountCases("prior"), 3);
  for (const Json& c : Fixture()["cases"]) {
    if (c["objective"] != "prior") continue;
    SCOPED_TRACE(c["name"].get<std::string>());
    PriorOptions options;
    options.alpha = c["alpha"];
    options.weight_sum_floor = c["weight_sum_floor"];
    auto prior = PriorObjective::Create(options);
    ASSERT_TRUE(prior.ok()) << prior.status();
    MetricSums sums;
    std::vector<float> coef;
    double loss = 0;
    for (const Sequence& s : seqs) {
      loss +=
          prior->Sequence(s.scores, s.logp, s.ref_logp, tokens, &sums, &coef);
    }
    ExpectClose(loss / tokens, c["loss"], "loss");
    ExpectMetrics(sums, c["metrics"]);
    ExpectArrays(LogitGrads(seqs, coef, {}, vocab), c["grad_logits"], "dz");
  }
}

Divergence ParseDivergence(const std::string& name) {
  if (name == "TOTAL_VARIATION") return Divergence::kTotalVariation;
  if (name == "PEARSON_CHI2") return Divergence::kPearsonChi2;
  if (name == "NEYMAN_CHI2") return Divergence::kNeymanChi2;
  if (name == "KL") return Divergence::kKl;
  if (name == "SQUARED_HELLINGER") return Divergence::kSquaredHellinger;
  EXPECT_EQ(name, "JENSEN_SHANNON");
  return Divergence::kJensenShannon;
}

TEST(ObjectiveFixture, ImplicitSft) {
  const int vocab = Fixture()["vocab"];
  const std::vector<Sequence> seqs = LoadSequences(Fixture()["demos"]);
  const int n = static_cast<int>(seqs.size());
  // Six divergences × two granularities, and three clamped cases.
  ASSERT_EQ(CountCases("implicit_sft"), 15);
  for (const Json& c : Fixture()["cases"]) {
    if (c["objective"] != "implicit_sft") continue;
    SCOPED_TRACE(c["name"].get<std::string>());
    ImplicitSftOptions options;
    options.divergence = ParseDivergence(c["divergence"]);
    options.granularity = c["granularity"] == "TOKEN" ? Granularity::kToken
                                                      : Granularity::kSequence;
    options.beta = c["beta"];
    options.domain_margin = c["domain_margin"];
    auto isft = ImplicitSftObjective::Create(options);
    ASSERT_TRUE(isft.ok()) << isft.status();
    MetricSums sums;
    std::vector<float> coef;
    double loss = 0;
    for (const Sequence& s : seqs) {
      loss += isft->Sequence(s.scores, s.logp, s.ref_logp_sum, s.ref_logp, n,
                             &sums, &coef);
    }
    ExpectClose(loss / n, c["loss"], "loss");
    ExpectMetrics(sums, c["metrics"]);
    ExpectArrays(LogitGrads(seqs, coef, {}, vocab), c["grad_logits"], "dz");
  }
}

TEST(ObjectiveFixture, SparsePo) {
  const int vocab = Fixture()["vocab"];
  const std::vector<Sequence> seqs = LoadSequences(Fixture()["pair_sequences"]);
  const int pairs = static_cast<int>(seqs.size()) / 2;
  ASSERT_EQ(CountCases("sparsepo"), 4);
  for (const Json& c : Fixture()["cases"]) {
    if (c["objective"] != "sparsepo") continue;
    SCOPED_TRACE(c["name"].get<std::string>());
    SparsePoOptions options;
    options.beta = c["beta"];
    options.l1_reward = c["l1_reward"];
    options.l1_kl = c["l1_kl"];
    options.common_mask = c["common_mask"];
    auto sparsepo = SparsePoObjective::Create(options, vocab);
    ASSERT_TRUE(sparsepo.ok()) << sparsepo.status();
    auto response = [&](const Sequence& s) {
      SparsePoResponse r;
      r.logp = s.logp;
      r.ref_logp = s.ref_logp;
      r.kl = s.kl;
      r.mask_reward = s.mask_reward;
      if (!options.common_mask) r.mask_kl = s.mask_kl;
      r.logit_sum = s.scores.logit_sum;
      return r;
    };
    // One pair per micro-batch: contributions scaled by the global count add
    // up to the whole batch's.
    MetricSums sums;
    SparsePoGradients grads;
    double loss = 0;
    for (int p = 0; p < pairs; ++p) {
      MetricSums micro;
      loss += sparsepo->Pair(response(seqs[2 * p]), response(seqs[2 * p + 1]),
                             pairs, &micro, &grads);
      sums.Merge(micro);
    }
    ExpectClose(loss / pairs, c["loss"], "loss");
    ExpectMetrics(sums, c["metrics"]);
    ExpectArrays(LogitGrads(seqs, grads.coef_a, grads.coef_b, vocab),
                 c["grad_logits"], "dz");
    ExpectArrays(MaskGrads(seqs, grads.dmask_reward), c["grad_mask_reward"],
                 "dmask_reward");
    if (options.common_mask) {
      EXPECT_TRUE(grads.dmask_kl.empty());
    } else {
      ExpectArrays(MaskGrads(seqs, grads.dmask_kl), c["grad_mask_kl"],
                   "dmask_kl");
    }
  }
}

}  // namespace
}  // namespace prefopt::objectives
