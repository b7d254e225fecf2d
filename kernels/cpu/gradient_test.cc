// Finite-difference checks of every op's Backward. The loss is always computed
// with ReferenceBackend's Forward; the Backward under test is each CPU
// backend's. Gradient buffers start from random values, so the checks also
// cover the accumulate (+=) contract.
//
// Method: loss = sum_i w_i * out_i with fixed random w (for the output layer,
// loss = -sum_n coef[n] * logp[n]), accumulated in double over the fp32
// outputs; central differences with step eps on up to kSamples coordinates of
// each input. Tolerance: max |analytic - numeric| <= kTol * max |analytic|
// (kTol = 1e-3): the fp32 rounding of the outputs, divided by 2*eps, and the
// O(eps^2) truncation error both stay near 1e-4 of the gradient's scale here,
// while a wrong term moves the error to O(1).
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <memory>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/backend.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/reference.h"
#include "kernels/cpu/test_util.h"

namespace prefopt::kernels {
namespace {

using testing::Delta;
using testing::MaxAbs;
using testing::RandomInts;
using testing::RandomNormal;

constexpr double kTol = 1e-3;
constexpr int kSamples = 150;

double Dot(const std::vector<float>& a, const std::vector<float>& b) {
  double acc = 0.0;
  for (size_t i = 0; i < a.size(); ++i) acc += static_cast<double>(a[i]) * b[i];
  return acc;
}

// Checks analytic (d loss / d x) against central differences of loss() in x.
void ExpectGradient(std::vector<float>* x, const std::vector<float>& analytic,
                    const std::function<double()>& loss, float eps,
                    const std::string& what) {
  ASSERT_EQ(x->size(), analytic.size()) << what;
  std::vector<size_t> coords;
  if (x->size() <= kSamples) {
    for (size_t i = 0; i < x->size(); ++i) coords.push_back(i);
  } else {
    std::mt19937 rng(7);
    std::uniform_int_distribution<size_t> pick(0, x->size() - 1);
    for (int k = 0; k < kSamples; ++k) coords.push_back(pick(rng));
  }
  const double scale = MaxAbs(analytic);
  ASSERT_TRUE(std::isfinite(scale)) << what;
  ASSERT_GT(scale, 0.0) << what << ": all-zero gradient checks nothing";
  double worst = 0.0;
  size_t worst_i = 0;
  double worst_numeric = 0.0;
  for (size_t i : coords) {
    const float saved = (*x)[i];
    const float plus = saved + eps, minus = saved - eps;
    (*x)[i] = plus;
    const double loss_plus = loss();
    (*x)[i] = minus;
    const double loss_minus = loss();
    (*x)[i] = saved;
    const double numeric =
        (loss_plus - loss_minus) / (static_cast<double>(plus) - minus);
    double err = std::fabs(numeric - analytic[i]) / scale;
    if (std::isnan(err)) err = std::numeric_limits<double>::infinity();
    if (err > worst) {
      worst = err;
      worst_i = i;
      worst_numeric = numeric;
    }
  }
  EXPECT_LT(worst, kTol) << what << ": at " << worst_i << " analytic "
                         << analytic[worst_i] << " numeric " << worst_numeric
                         << " (gradient scale " << scale << ")";
}

class GradientTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    if (GetParam() == "reference") {
      backend_ = std::make_unique<ReferenceBackend>();
    } else {
      auto cpu = std::make_unique<CpuBackend>();
      // cpu_tiled: attention on the tiled path even for these small batches
      // (cpu takes the stored one).
      if (GetParam() == "cpu_tiled") cpu->set_stored_attention_limit(0);
      backend_ = std::move(cpu);
    }
  }
  Backend& backend() { return *backend_; }

  ReferenceBackend ref_;
  std::unique_ptr<Backend> backend_;
};

TEST_P(GradientTest, Embedding) {
  const int N = 12, C = 5, V = 4, T = 6;
  // 12 rows over 4 ids and 6 positions: ids and positions repeat.
  const std::vector<int32_t> ids = RandomInts(N, V, 1);
  const std::vector<int32_t> pos = RandomInts(N, T, 2);
  std::vector<float> wte = RandomNormal(V * C, 3);
  std::vector<float> wpe = RandomNormal(T * C, 4);
  const std::vector<float> w = RandomNormal(N * C, 5);
  std::vector<float> out(N * C);
  auto loss = [&] {
    ref_.EmbeddingForward(out.data(), ids.data(), pos.data(), wte.data(),
                          wpe.data(), N, C);
    return Dot(out, w);
  };
  const std::vector<float> dwte0 = RandomNormal(V * C, 6);
  const std::vector<float> dwpe0 = RandomNormal(T * C, 7);
  std::vector<float> dwte = dwte0, dwpe = dwpe0;
  backend().EmbeddingBackward(dwte.data(), dwpe.data(), w.data(), ids.data(),
                              pos.data(), N, C);
  ExpectGradient(&wte, Delta(dwte, dwte0), loss, 1e-2f, "dwte");
  ExpectGradient(&wpe, Delta(dwpe, dwpe0), loss, 1e-2f, "dwpe");
}

TEST_P(GradientTest, LayerNorm) {
  const int N = 5, C = 13;
  const float eps = 1e-5f;
  std::vector<float> inp = RandomNormal(N * C, 1, 1.5f);
  for (float& x : inp) x += 2.0f;
  std::vector<float> weight = RandomNormal(C, 2, 0.2f);
  for (float& x : weight) x += 1.0f;
  std::vector<float> bias = RandomNormal(C, 3);
  const std::vector<float> w = RandomNormal(N * C, 4);
  std::vector<float> out(N * C), mean(N), rstd(N);
  auto loss = [&] {
    ref_.LayerNormForward(out.data(), mean.data(), rstd.data(), inp.data(),
                          weight.data(), bias.data(), N, C, eps);
    return Dot(out, w);
  };
  backend().LayerNormForward(out.data(), mean.data(), rstd.data(), inp.data(),
                             weight.data(), bias.data(), N, C, eps);
  const std::vector<float> dinp0 = RandomNormal(N * C, 5);
  const std::vector<float> dweight0 = RandomNormal(C, 6);
  const std::vector<float> dbias0 = RandomNormal(C, 7);
  std::vector<float> dinp = dinp0, dweight = dweight0, dbias = dbias0;
  backend().LayerNormBackward(dinp.data(), dweight.data(), dbias.data(),
                              w.data(), inp.data(), weight.data(), mean.data(),
                              rstd.data(), N, C);
  ExpectGradient(&inp, Delta(dinp, dinp0), loss, 3e-3f, "dinp");
  ExpectGradient(&weight, Delta(dweight, dweight0), loss, 3e-3f, "dweight");
  ExpectGradient(&bias, Delta(dbias, dbias0), loss, 3e-3f, "dbias");
}

TEST_P(GradientTest, RmsNorm) {
  const int N = 5, C = 13;
  const float eps = 1e-5f;
  std::vector<float> inp = RandomNormal(N * C, 1, 1.5f);
  for (float& x : inp) x += 0.5f;
  std::vector<float> weight = RandomNormal(C, 2, 0.2f);
  for (float& x : weight) x += 1.0f;
  const std::vector<float> w = RandomNormal(N * C, 4);
  std::vector<float> out(N * C), rstd(N);
  auto loss = [&] {
    ref_.RmsNormForward(out.data(), rstd.data(), inp.data(), weight.data(), N,
                        C, eps);
    return Dot(out, w);
  };
  backend().RmsNormForward(out.data(), rstd.data(), inp.data(), weight.data(),
                           N, C, eps);
  const std::vector<float> dinp0 = RandomNormal(N * C, 5);
  const std::vector<float> dweight0 = RandomNormal(C, 6);
  std::vector<float> dinp = dinp0, dweight = dweight0;
  backend().RmsNormBackward(dinp.data(), dweight.data(), w.data(), inp.data(),
                            weight.data(), rstd.data(), N, C);
  ExpectGradient(&inp, Delta(dinp, dinp0), loss, 3e-3f, "dinp");
  ExpectGradient(&weight, Delta(dweight, dweight0), loss, 3e-3f, "dweight");
}

TEST_P(GradientTest, Matmul) {
  const int N = 7, C = 11, OC = 9;
  std::vector<float> inp = RandomNormal(N * C, 1);
  std::vector<float> weight = RandomNormal(OC * C, 2);
  std::vector<float> bias = RandomNormal(OC, 3);
  const std::vector<float> w = RandomNormal(N * OC, 4);
  std::vector<float> out(N * OC);
  auto loss = [&] {
    ref_.MatmulForward(out.data(), inp.data(), weight.data(), bias.data(), N, C,
                       OC);
    return Dot(out, w);
  };
  const std::vector<float> dinp0 = RandomNormal(N * C, 5);
  const std::vector<float> dweight0 = RandomNormal(OC * C, 6);
  const std::vector<float> dbias0 = RandomNormal(OC, 7);
  std::vector<float> dinp = dinp0, dweight = dweight0, dbias = dbias0;
  backend().MatmulBackward(dinp.data(), dweight.data(), dbias.data(), w.data(),
                           inp.data(), weight.data(), N, C, OC);
  ExpectGradient(&inp, Delta(dinp, dinp0), loss, 1e-2f, "dinp");
  ExpectGradient(&weight, Delta(dweight, dweight0), loss, 1e-2f, "dweight");
  ExpectGradient(&bias, Delta(dbias, dbias0), loss, 1e-2f, "dbias");
}

TEST_P(GradientTest, Gelu) {
  const size_t n = 37;
  std::vector<float> inp = RandomNormal(n, 1, 3.0f);
  const std::vector<float> w = RandomNormal(n, 2);
  std::vector<float> out(n);
  auto loss = [&] {
    ref_.GeluForward(out.data(), inp.data(), n);
    return Dot(out, w);
  };
  const std::vector<float> dinp0 = RandomNormal(n, 3);
  std::vector<float> dinp = dinp0;
  backend().GeluBackward(dinp.data(), inp.data(), w.data(), n);
  ExpectGradient(&inp, Delta(dinp, dinp0), loss, 1e-2f, "dinp");
}

TEST_P(GradientTest, SwiGlu) {
  // FF = 13: a full vector and a partial one per row in the fast path.
  const int N = 3, FF = 13;
  std::vector<float> gate_up = RandomNormal(N * 2 * FF, 1, 2.5f);
  const std::vector<float> w = RandomNormal(N * FF, 2);
  std::vector<float> out(N * FF);
  auto loss = [&] {
    ref_.SwiGluForward(out.data(), gate_up.data(), N, FF);
    return Dot(out, w);
  };
  const std::vector<float> dgate_up0 = RandomNormal(N * 2 * FF, 3);
  std::vector<float> dgate_up = dgate_up0;
  backend().SwiGluBackward(dgate_up.data(), gate_up.data(), w.data(), N, FF);
  ExpectGradient(&gate_up, Delta(dgate_up, dgate_up0), loss, 1e-2f, "dgate_up");
}

// RoPE on a qkv buffer with grouped KV heads; positions repeat and include 0.
// Its backward rotates the upstream gradient in place (no accumulation), so
// the check is on the rotated buffer itself.
TEST_P(GradientTest, Rope) {
  const int N = 7, NH = 4, NKV = 2, hs = 6, max_pos = 5;
  const int row = (NH + 2 * NKV) * hs;
  const std::vector<int32_t> pos = {0, 1, 2, 4, 1, 0, 3};
  const std::vector<float> angle = RandomNormal(max_pos * hs / 2, 1, 2.0f);
  std::vector<float> cos(angle.size()), sin(angle.size());
  for (size_t i = 0; i < angle.size(); ++i) {
    cos[i] = std::cos(angle[i]);
    sin[i] = std::sin(angle[i]);
  }
  std::vector<float> qkv = RandomNormal(N * row, 2);
  const std::vector<float> w = RandomNormal(N * row, 3);
  std::vector<float> out(N * row);
  auto loss = [&] {
    out = qkv;
    ref_.RopeForward(out.data(), pos.data(), cos.data(), sin.data(), N, NH, NKV,
                     hs);
    return Dot(out, w);
  };
  std::vector<float> dqkv = w;
  backend().RopeBackward(dqkv.data(), pos.data(), cos.data(), sin.data(), N, NH,
                         NKV, hs);
  ExpectGradient(&qkv, dqkv, loss, 1e-2f, "dqkv");
}

// Three packed sequences (one longer than the fast path's 64-row block, one a
// single token) and grouped KV heads, NH / NKV = 2.
TEST_P(GradientTest, Attention) {
  const int NH = 4, NKV = 2, hs = 8;
  const std::vector<SeqSpan> spans = {{0, 3}, {3, 70}, {73, 1}, {74, 9}};
  const int N = 83, num_seqs = static_cast<int>(spans.size());
  const int row = (NH + 2 * NKV) * hs;
  std::vector<float> qkv = RandomNormal(N * row, 1);
  const std::vector<float> w = RandomNormal(N * NH * hs, 2);
  std::vector<float> out(N * NH * hs);
  // Each backend saves its own state (probabilities or row logsumexp).
  std::vector<float> ref_probs(
      ref_.AttentionProbsSize(spans.data(), num_seqs, NH));
  std::vector<float> probs(
      backend().AttentionProbsSize(spans.data(), num_seqs, NH));
  auto loss = [&] {
    ref_.AttentionForward(out.data(), ref_probs.data(), qkv.data(),
                          spans.data(), num_seqs, NH, NKV, hs);
    return Dot(out, w);
  };
  backend().AttentionForward(out.data(), probs.data(), qkv.data(), spans.data(),
                             num_seqs, NH, NKV, hs);
  const std::vector<float> dqkv0 = RandomNormal(N * row, 3);
  std::vector<float> dqkv = dqkv0;
  backend().AttentionBackward(dqkv.data(), w.data(), qkv.data(), out.data(),
                              probs.data(), spans.data(), num_seqs, NH, NKV,
                              hs);
  ExpectGradient(&qkv, Delta(dqkv, dqkv0), loss, 1e-2f, "dqkv");
}

// 11 rows through chunks of 4 (which do not divide 11), with zero
// coefficients on the first, two middle and the last rows.
TEST_P(GradientTest, OutputLayer) {
  const int N = 11, C = 6, V = 37, chunk = 4;
  std::vector<float> h = RandomNormal(N * C, 1);
  std::vector<float> wout = RandomNormal(V * C, 2, 0.5f);
  const std::vector<int32_t> labels = RandomInts(N, V, 3);
  std::vector<float> coef = RandomNormal(N, 4);
  for (int n : {0, 5, 6, 10}) coef[n] = 0.0f;
  std::vector<float> chunk_buf(chunk * V);
  std::vector<float> lse(N), logp(N), logit_sum(N), entropy(N);
  std::vector<int32_t> correct(N);
  auto loss = [&] {
    ref_.OutputForward(lse.data(), logp.data(), logit_sum.data(),
                       correct.data(), entropy.data(), nullptr, h.data(),
                       wout.data(), labels.data(), N, C, V, chunk_buf.data(),
                       chunk);
    double acc = 0.0;
    for (int n = 0; n < N; ++n) acc -= static_cast<double>(coef[n]) * logp[n];
    return acc;
  };
  backend().OutputForward(lse.data(), logp.data(), logit_sum.data(),
                          correct.data(), entropy.data(), nullptr, h.data(),
                          wout.data(), labels.data(), N, C, V, chunk_buf.data(),
                          chunk);
  const std::vector<float> dh0 = RandomNormal(N * C, 5);
  const std::vector<float> dwout0 = RandomNormal(V * C, 6);
  std::vector<float> dh = dh0, dwout = dwout0;
  backend().OutputBackward(dh.data(), dwout.data(), h.data(), wout.data(),
                           labels.data(), lse.data(), coef.data(), N, C, V,
                           chunk_buf.data(), chunk);
  ExpectGradient(&h, Delta(dh, dh0), loss, 1e-2f, "dh");
  ExpectGradient(&wout, Delta(dwout, dwout0), loss, 1e-2f, "dwout");
  // Rows with coef 0 carry no gradient at all.
  for (int n : {0, 5, 6, 10}) {
    for (int c = 0; c < C; ++c) EXPECT_EQ(dh[n * C + c], dh0[n * C + c]);
  }
}

INSTANTIATE_TEST_SUITE_P(Backends, GradientTest,
                         ::testing::Values("reference", "cpu", "cpu_tiled"),
                         [](const ::testing::TestParamInfo<std::string>& info) {
                           return info.param;
                         });

}  // namespace
}  // namespace prefopt::kernels
