// SparsePO: with both masks ≡ 1 it is TDPO1, written here independently from
// Zeng et al. 2024 on full logits (loss and logit gradient by finite
// differences); the mask gradients against finite differences of the loss;
// common vs independent masks; the metrics.
#include "trainer/objectives/sparsepo.h"

#include <cmath>
#include <random>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "kernels/cpu/cpu_backend.h"
#include "trainer/objectives/naive_logits.h"

namespace prefopt::objectives {
namespace {

using testing::LogitGrad;
using testing::LogSoftmax;
using testing::NaiveRow;
using testing::NaiveRowOf;

constexpr int kVocab = 13;

// One response: logits of its response rows only.
struct Response {
  std::vector<std::vector<double>> z, zr;
  std::vector<int> labels;
};

Response RandomResponse(int k, std::mt19937* rng) {
  std::normal_distribution<double> n(0.0, 1.0);
  Response r;
  for (int t = 0; t < k; ++t) {
    std::vector<double> z(kVocab), zr(kVocab);
    for (int v = 0; v < kVocab; ++v) {
      // fp32 values, as logits are.
      zr[v] = static_cast<float>(1.5 * n(*rng));
      z[v] = static_cast<float>(zr[v] + 0.8 * n(*rng));
    }
    r.z.push_back(z);
    r.zr.push_back(zr);
    r.labels.push_back(static_cast<int>((*rng)() % kVocab));
  }
  return r;
}

// TDPO1 (Zeng et al. 2024, eq. for TDPO1 / the official tdpo_loss with
// if_tdpo2 = False): with the sequential KL D_SeqKL(y) = Σ_t KL(p_t‖π_t) and
// the log-ratio margin M(y) = Σ_t log π(y_t)/π_ref(y_t),
//   loss = −log σ(β [(M(y_w) − M(y_l)) − (D_SeqKL(y_l) − D_SeqKL(y_w))]).
double Tdpo1Loss(const Response& w, const Response& l, double beta) {
  auto margin_and_kl = [](const Response& r, double* margin, double* kl) {
    *margin = 0;
    *kl = 0;
    for (size_t t = 0; t < r.labels.size(); ++t) {
      const std::vector<double> lp = LogSoftmax(r.z[t]);
      const std::vector<double> lr = LogSoftmax(r.zr[t]);
      *margin += lp[r.labels[t]] - lr[r.labels[t]];
      for (int v = 0; v < kVocab; ++v) *kl += std::exp(lr[v]) * (lr[v] - lp[v]);
    }
  };
  double mw, kw, ml, kl;
  margin_and_kl(w, &mw, &kw);
  margin_and_kl(l, &ml, &kl);
  const double x = beta * ((mw - ml) - (kl - kw));
  return std::log1p(std::exp(-x));  // −log σ(x), x moderate here
}

// The trainer's view of a response: fp32 per-token ℓ, ℓ̃, K.
struct Tokens {
  std::vector<NaiveRow> naive;
  std::vector<float> logp, ref_logp, kl, mask_u, mask_d;
  double logit_sum = 0;
};

Tokens TokensOf(const Response& r) {
  Tokens t;
  for (size_t i = 0; i < r.labels.size(); ++i) {
    const NaiveRow row = NaiveRowOf(r.z[i], r.zr[i], r.labels[i]);
    t.naive.push_back(row);
    t.logp.push_back(static_cast<float>(row.logp));
    t.ref_logp.push_back(static_cast<float>(row.ref_logp));
    t.kl.push_back(static_cast<float>(row.kl));
    t.logit_sum += row.logit_sum;
  }
  t.mask_u.assign(r.labels.size(), 1.0f);
  t.mask_d.assign(r.labels.size(), 1.0f);
  return t;
}

SparsePoResponse View(const Tokens& t) {
  SparsePoResponse r;
  r.logp = t.logp;
  r.ref_logp = t.ref_logp;
  r.kl = t.kl;
  r.mask_reward = t.mask_u;
  r.mask_kl = t.mask_d;
  r.logit_sum = t.logit_sum;
  return r;
}

SparsePoObjective Make(double beta, double cu, double cd, bool common) {
  SparsePoOptions o;
  o.beta = beta;
  o.l1_reward = cu;
  o.l1_kl = cd;
  o.common_mask = common;
  auto s = SparsePoObjective::Create(o, kVocab);
  EXPECT_TRUE(s.ok()) << s.status();
  return *s;
}

TEST(SparsePo, UnitMasksAreTdpo1) {
  std::mt19937 rng(7);
  const double beta = 0.8;
  const Response w = RandomResponse(4, &rng), l = RandomResponse(3, &rng);
  const Tokens tw = TokensOf(w), tl = TokensOf(l);
  for (bool common : {true, false}) {
    const SparsePoObjective sp = Make(beta, 0, 0, common);
    MetricSums sums;
    SparsePoGradients g;
    const double loss = sp.Pair(View(tw), View(tl), 1, &sums, &g);
    EXPECT_NEAR(loss, Tdpo1Loss(w, l, beta), 1e-6);

    // ∂TDPO1/∂z by central differences, against the A/B form.
    const double h = 1e-5;
    size_t i = 0;
    for (int side = 0; side < 2; ++side) {
      const Response& r = side == 0 ? w : l;
      const Tokens& tk = side == 0 ? tw : tl;
      for (size_t t = 0; t < r.labels.size(); ++t, ++i) {
        const std::vector<double> dz =
            LogitGrad(tk.naive[t], r.labels[t], g.coef_a[i], g.coef_b[i]);
        for (int v = 0; v < kVocab; ++v) {
          Response wp = w, wm = w, lp = l, lm = l;
          (side == 0 ? wp : lp).z[t][v] += h;
          (side == 0 ? wm : lm).z[t][v] -= h;
          const double fd =
              (Tdpo1Loss(wp, lp, beta) - Tdpo1Loss(wm, lm, beta)) / (2 * h);
          EXPECT_NEAR(dz[v], fd, 1e-6) << side << " " << t << " " << v;
        }
      }
    }
  }
}

// The loss of SparsePO as a function of the masks, in double, for finite
// differences.
double LossAt(const SparsePoObjective& sp, Tokens w, Tokens l) {
  MetricSums unused;
  SparsePoGradients g;
  return sp.Pair(View(w), View(l), 1, &unused, &g);
}

TEST(SparsePo, MaskGradientsMatchFiniteDifferences) {
  std::mt19937 rng(11);
  std::uniform_real_distribution<float> u(0.1f, 1.0f);
  Tokens tw = TokensOf(RandomResponse(5, &rng));
  Tokens tl = TokensOf(RandomResponse(3, &rng));
  for (Tokens* t : {&tw, &tl}) {
    for (float& m : t->mask_u) m = u(rng);
    for (float& m : t->mask_d) m = u(rng);
  }
  for (bool common : {true, false}) {
    const SparsePoObjective sp = Make(0.5, 0.03, 0.07, common);
    MetricSums sums;
    SparsePoGradients g;
    sp.Pair(View(tw), View(tl), 1, &sums, &g);
    // Masks are fp32: step where a float moves by an exact amount.
    const float h = 1.0f / 1024;
    size_t i = 0;
    for (int side = 0; side < 2; ++side) {
      const size_t k = (side == 0 ? tw : tl).logp.size();
      for (size_t t = 0; t < k; ++t, ++i) {
        for (int which = 0; which < (common ? 1 : 2); ++which) {
          Tokens wp = tw, wm = tw, lp = tl, lm = tl;
          auto mask = [&](Tokens& x) -> float& {
            return which == 0 ? x.mask_u[t] : x.mask_d[t];
          };
          mask(side == 0 ? wp : lp) += h;
          mask(side == 0 ? wm : lm) -= h;
          const double fd = (LossAt(sp, wp, lp) - LossAt(sp, wm, lm)) / (2 * h);
          const float got = which == 0 ? g.dmask_reward[i] : g.dmask_kl[i];
          EXPECT_NEAR(got, fd, 1e-4 * std::max(1.0, std::fabs(fd)))
              << (common ? "common " : "independent ") << side << " " << t
              << " " << which;
        }
      }
    }
    EXPECT_EQ(g.dmask_kl.empty(), common);
  }
}

TEST(SparsePo, CommonMaskIsBothMasks) {
  std::mt19937 rng(13);
  Tokens tw = TokensOf(RandomResponse(4, &rng));
  Tokens tl = TokensOf(RandomResponse(6, &rng));
  std::uniform_real_distribution<float> u(0.0f, 1.0f);
  for (Tokens* t : {&tw, &tl}) {
    for (float& m : t->mask_u) m = u(rng);
    t->mask_d = t->mask_u;
  }
  // A common mask with weights (c_u, c_d) is the independent pair of equal
  // masks with both weights (c_u + c_d)/2.
  const SparsePoObjective common = Make(0.8, 0.01, 0.05, true);
  const SparsePoObjective indep = Make(0.8, 0.03, 0.03, false);
  MetricSums s1, s2;
  SparsePoGradients g1, g2;
  const double l1 = common.Pair(View(tw), View(tl), 4, &s1, &g1);
  const double l2 = indep.Pair(View(tw), View(tl), 4, &s2, &g2);
  EXPECT_NEAR(l1, l2 - 0.03 * (s2.Means()["mask/l1"]), 1e-12);
  EXPECT_EQ(g1.coef_a, g2.coef_a);
  EXPECT_EQ(g1.coef_b, g2.coef_b);
  for (size_t i = 0; i < g1.dmask_reward.size(); ++i) {
    // The independent pair carries the L1 term twice; the common mask once.
    const double l1_term =
        0.03 * (tw.mask_u.size() > i ? (tw.mask_u[i] > 0)
                                     : (tl.mask_u[i - tw.mask_u.size()] > 0));
    EXPECT_NEAR(g1.dmask_reward[i],
                g2.dmask_reward[i] + g2.dmask_kl[i] - l1_term / 4, 1e-7);
  }
}

// mask_on_reward / mask_on_kl: a term that is not masked is the independent
// pair's term with m ≡ 1 and no L1 weight; the other term keeps its mask and
// its weight, whether the mask is common or independent.
TEST(SparsePo, UnmaskedTermsReadOnes) {
  std::mt19937 rng(19);
  std::uniform_real_distribution<float> u(0.0f, 1.0f);
  Tokens tw = TokensOf(RandomResponse(4, &rng));
  Tokens tl = TokensOf(RandomResponse(3, &rng));
  for (Tokens* t : {&tw, &tl}) {
    for (float& m : t->mask_u) m = u(rng);
    for (float& m : t->mask_d) m = u(rng);
  }
  const double cu = 0.04, cd = 0.09;
  for (bool common : {true, false}) {
    for (bool on_reward : {true, false}) {
      SparsePoOptions o;
      o.beta = 0.7;
      o.l1_reward = cu;
      o.l1_kl = cd;
      o.common_mask = common;
      o.mask_on_reward = on_reward;
      o.mask_on_kl = !on_reward;
      auto sp = SparsePoObjective::Create(o, kVocab);
      ASSERT_TRUE(sp.ok()) << sp.status();
      // The masked term's mask: with a common mask it is mask_reward.
      Tokens w = tw, l = tl;
      if (common && !on_reward) {
        w.mask_u = tw.mask_d;
        l.mask_u = tl.mask_d;
      }
      // The same with independent masks, the unmasked one all ones and
      // unweighted.
      Tokens ew = tw, el = tl;
      for (Tokens* t : {&ew, &el}) {
        std::vector<float>& ones = on_reward ? t->mask_d : t->mask_u;
        ones.assign(ones.size(), 1.0f);
      }
      const SparsePoObjective both =
          Make(0.7, on_reward ? cu : 0.0, on_reward ? 0.0 : cd, false);
      MetricSums s1, s2;
      SparsePoGradients g1, g2;
      const double got = sp->Pair(View(w), View(l), 2, &s1, &g1);
      const double want = both.Pair(View(ew), View(el), 2, &s2, &g2);
      const std::string what = absl::StrCat(common ? "common" : "independent",
                                            on_reward ? " reward" : " kl");
      EXPECT_NEAR(got, want, 1e-12) << what;
      EXPECT_EQ(g1.coef_a, g2.coef_a) << what;
      EXPECT_EQ(g1.coef_b, g2.coef_b) << what;
      const std::vector<float>& dmask =
          common || on_reward ? g1.dmask_reward : g1.dmask_kl;
      EXPECT_EQ(dmask, on_reward ? g2.dmask_reward : g2.dmask_kl) << what;
      EXPECT_TRUE((common || on_reward ? g1.dmask_kl : g1.dmask_reward).empty())
          << what;
      auto m1 = s1.Means(), m2 = s2.Means();
      for (const char* metric :
           {"rewards/chosen", "rewards/rejected", "kl/chosen", "kl/rejected"}) {
        EXPECT_NEAR(m1[metric], m2[metric], 1e-12) << what << " " << metric;
      }
      const bool kl_metrics = !common && !on_reward;
      EXPECT_EQ(m1.count("mask/kl_l1"), kl_metrics ? 1u : 0u) << what;
      EXPECT_EQ(m1.count("mask/l1"), kl_metrics ? 0u : 1u) << what;
    }
  }
  SparsePoOptions none;
  none.mask_on_reward = false;
  none.mask_on_kl = false;
  EXPECT_FALSE(SparsePoObjective::Create(none, kVocab).ok());
}

TEST(SparsePo, CoefficientsScaleWithTheGlobalPairCount) {
  std::mt19937 rng(17);
  const Tokens tw = TokensOf(RandomResponse(3, &rng));
  const Tokens tl = TokensOf(RandomResponse(2, &rng));
  const SparsePoObjective sp = Make(0.8, 0.1, 0.1, false);
  MetricSums s;
  SparsePoGradients one, eight;
  sp.Pair(View(tw), View(tl), 1, &s, &one);
  sp.Pair(View(tw), View(tl), 8, &s, &eight);
  for (size_t i = 0; i < one.coef_a.size(); ++i) {
    EXPECT_EQ(one.coef_a[i], 8 * eight.coef_a[i]);
    EXPECT_EQ(one.coef_b[i], 8 * eight.coef_b[i]);
    EXPECT_EQ(one.dmask_reward[i], 8 * eight.dmask_reward[i]);
    EXPECT_EQ(one.dmask_kl[i], 8 * eight.dmask_kl[i]);
  }
}

TEST(SparsePo, Metrics) {
  // Hand-made per-token values: chosen 2 tokens, rejected 2 tokens.
  const std::vector<float> lw = {-1.0f, -2.0f}, rw = {-1.5f, -1.5f},
                           kw = {-0.25f, -0.5f}, mw = {0.0f, 1.0f};
  const std::vector<float> ll = {-3.0f, -1.0f}, rl = {-2.0f, -1.0f},
                           kl = {-0.125f, 0.0f}, ml = {0.5f, 0.5f};
  SparsePoResponse w{lw, rw, kw, mw, {}, 10.0};
  SparsePoResponse l{ll, rl, kl, ml, {}, -4.0};
  const SparsePoObjective sp = Make(0.5, 0, 0, true);
  MetricSums sums;
  SparsePoGradients g;
  const double loss = sp.Pair(w, l, 1, &sums, &g);
  // U_w = 0·0.5 + 1·(−0.5) = −0.5, D_w = −0.5; U_l = 0.5·(−1) + 0 = −0.5,
  // D_l = −0.0625. Δ = 0 − (−0.4375) = 0.4375.
  EXPECT_NEAR(loss, std::log1p(std::exp(-0.5 * 0.4375)), 1e-12);
  auto m = sums.Means();
  EXPECT_NEAR(m["rewards/chosen"], 0.5 * (-0.5 - 0.5), 1e-12);
  EXPECT_NEAR(m["rewards/rejected"], 0.5 * (-0.5 - 0.0625), 1e-12);
  EXPECT_NEAR(m["rewards/margins"], -0.5 + 0.28125, 1e-12);
  EXPECT_EQ(m["rewards/accuracies"], 0.0);
  EXPECT_EQ(m["logps/chosen"], -3.0);
  EXPECT_EQ(m["logps/rejected"], -4.0);
  EXPECT_NEAR(m["logits/chosen"], 10.0 / (2 * kVocab), 1e-12);
  EXPECT_NEAR(m["logits/rejected"], -4.0 / (2 * kVocab), 1e-12);
  EXPECT_EQ(m["kl/chosen"], 0.5);
  EXPECT_EQ(m["kl/rejected"], 0.0625);
  EXPECT_EQ(m["kl/unmasked_chosen"], 0.75);
  EXPECT_EQ(m["kl/unmasked_rejected"], 0.125);
  EXPECT_EQ(m["mask/sparsity"], 25.0);
  EXPECT_EQ(m["mask/mean"], 0.5);
  EXPECT_EQ(m["mask/l1"], 2.0);
  EXPECT_EQ(m.count("mask/kl_sparsity"), 0u);
  // A zero mask token has no logit gradient.
  EXPECT_EQ(g.coef_a[0], 0.0f);
  EXPECT_EQ(g.coef_b[0], 0.0f);
}

// Backend::SparsePoCoefficients (the CPU backend's) over a micro-batch of
// three pairs gives what Pair gives pair by pair: the per-token outputs in
// row order, and the same metrics once AddMetrics names them.
TEST(SparsePo, BackendCoefficientsMatchPair) {
  std::mt19937 rng(11);
  std::normal_distribution<float> n(0.0f, 1.0f);
  const std::vector<int> lengths = {3, 5, 1, 4, 6, 2};
  const int rows = 21;
  std::vector<float> logp(rows), ref_logp(rows), kl(rows), logit_sum(rows),
      entropy(rows), mask_reward(rows), mask_kl(rows);
  for (int r = 0; r < rows; ++r) {
    logp[r] = -std::fabs(n(rng));
    ref_logp[r] = -std::fabs(n(rng));
    kl[r] = -0.1f * std::fabs(n(rng));
    logit_sum[r] = 20 * n(rng);
    entropy[r] = std::fabs(n(rng));
    mask_reward[r] = std::max(0.0f, n(rng));
    mask_kl[r] = std::max(0.0f, n(rng) + 0.5f);
  }
  for (bool common : {true, false}) {
    for (int masked : {0, 1, 2}) {  // both terms, the reward only, the KL only
      SCOPED_TRACE(absl::StrCat("common ", common, " masked ", masked));
      SparsePoOptions o;
      o.beta = 0.6;
      o.l1_reward = 0.02;
      o.l1_kl = 0.05;
      o.common_mask = common;
      o.mask_on_reward = masked != 2;
      o.mask_on_kl = masked != 1;
      auto sp = SparsePoObjective::Create(o, kVocab);
      ASSERT_TRUE(sp.ok());
      const bool reads_reward = common || o.mask_on_reward;
      const bool reads_kl = !common && o.mask_on_kl;

      MetricSums want_sums;
      SparsePoGradients want;
      double entropy_sum = 0;
      std::vector<kernels::SeqSpan> spans;
      int start = 0;
      for (size_t s = 0; s < lengths.size(); ++s) {
        spans.push_back({start, lengths[s]});
        start += lengths[s];
      }
      auto response = [&](const kernels::SeqSpan& span) {
        SparsePoResponse r;
        auto part = [&](const std::vector<float>& v) {
          return absl::MakeConstSpan(v.data() + span.start, span.len);
        };
        r.logp = part(logp);
        r.ref_logp = part(ref_logp);
        r.kl = part(kl);
        if (reads_reward) r.mask_reward = part(mask_reward);
        if (reads_kl) r.mask_kl = part(mask_kl);
        for (int t = 0; t < span.len; ++t) {
          r.logit_sum += logit_sum[span.start + t];
          entropy_sum += entropy[span.start + t];
        }
        return r;
      };
      for (int i = 0; i < 3; ++i) {
        sp->Pair(response(spans[2 * i]), response(spans[2 * i + 1]), 8,
                 &want_sums, &want);
      }
      want_sums.Add("entropy", entropy_sum, rows);

      kernels::CpuBackend backend;
      std::vector<float> a(rows), b(rows), dmr(rows), dmk(rows);
      double metrics[kernels::kSparsePoMetricCount] = {};
      backend.SparsePoCoefficients(
          {a.data(), b.data(), dmr.data(), dmk.data()}, metrics,
          {logp.data(), ref_logp.data(), kl.data(), logit_sum.data(),
           entropy.data(), reads_reward ? mask_reward.data() : nullptr,
           reads_kl ? mask_kl.data() : nullptr},
          spans.data(), 3, sp->Params(8));
      MetricSums got_sums;
      sp->AddMetrics(metrics, 3, 3 + 1 + 6, 5 + 4 + 2, true, &got_sums);

      EXPECT_EQ(a, want.coef_a);
      EXPECT_EQ(b, want.coef_b);
      if (reads_reward) {
        EXPECT_EQ(dmr, want.dmask_reward);
      }
      if (reads_kl) {
        EXPECT_EQ(dmk, want.dmask_kl);
      }
      const auto got_means = got_sums.Means();
      const auto want_means = want_sums.Means();
      ASSERT_EQ(got_means.size(), want_means.size());
      for (const auto& [name, value] : want_means) {
        ASSERT_EQ(got_means.count(name), 1u) << name;
        EXPECT_NEAR(got_means.at(name), value, 1e-12 * (1 + std::fabs(value)))
            << name;
      }
    }
  }
}

TEST(SparsePo, RejectsBadOptions) {
  SparsePoOptions o;
  o.beta = -1;
  auto s = SparsePoObjective::Create(o, kVocab);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.status().message().find("objective.sparsepo.beta"),
            std::string::npos);
  o.beta = 0.8;
  o.l1_kl = -0.1;
  EXPECT_FALSE(SparsePoObjective::Create(o, kVocab).ok());
}

}  // namespace
}  // namespace prefopt::objectives
