// The fused SparsePO output layer against a double-precision reference that
// materializes every logit, and its backward pass against central finite
// differences of the scalar Σ_n −(A_n ℓ_n + B_n K_n), whose logit gradient is
// exactly the A/B form the kernel writes.
#include "kernels/cpu/fused_sparsepo.h"

#include <cmath>
#include <cstdint>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu/test_util.h"

namespace prefopt::kernels::cpu {
namespace {

using testing::Delta;
using testing::ErrorVsScale;
using testing::RandomInts;
using testing::RandomNormal;

struct Shape {
  int N, C, RC, V, chunk;
};

// Inputs of one test case, fp32 as the kernel sees them.
struct Problem {
  Shape s;
  std::vector<float> h, wout, ref_h, ref_wout, a, b;
  std::vector<int32_t> labels;

  SparsePoOutputLayers Layers() const {
    return {h.data(),        wout.data(), s.C, ref_h.data(),
            ref_wout.data(), s.RC,        s.V};
  }
};

Problem MakeProblem(const Shape& s, uint32_t seed) {
  Problem p;
  p.s = s;
  p.h = RandomNormal(size_t{1} * s.N * s.C, seed);
  p.wout = RandomNormal(size_t{1} * s.V * s.C, seed + 1, 0.3f);
  p.ref_h = RandomNormal(size_t{1} * s.N * s.RC, seed + 2);
  p.ref_wout = RandomNormal(size_t{1} * s.V * s.RC, seed + 3, 0.3f);
  p.a = RandomNormal(s.N, seed + 4);
  p.b = RandomNormal(s.N, seed + 5);
  p.labels = RandomInts(s.N, s.V, seed + 6);
  return p;
}

// Everything in double, logits materialized, K from its definition
// Σ_v p_v (log π_v − log p_v) rather than the kernel's one-pass form.
struct Naive {
  std::vector<double> lse, ref_lse, logp, ref_logp, kl, logit_sum,
      ref_logit_sum, entropy;
  std::vector<double> dh, dwout;  // of Σ −(A ℓ + B K)
};

std::vector<double> Logits(const std::vector<double>& h,
                           const std::vector<double>& w, int n, int C, int V) {
  std::vector<double> z(V);
  for (int v = 0; v < V; ++v) {
    double acc = 0;
    for (int c = 0; c < C; ++c)
      acc += h[size_t{1} * n * C + c] * w[size_t{1} * v * C + c];
    z[v] = acc;
  }
  return z;
}

double Lse(const std::vector<double>& z) {
  double m = z[0];
  for (double x : z) m = std::max(m, x);
  double s = 0;
  for (double x : z) s += std::exp(x - m);
  return m + std::log(s);
}

std::vector<double> ToDouble(const std::vector<float>& x) {
  return std::vector<double>(x.begin(), x.end());
}

Naive NaiveAll(const Problem& p, const std::vector<double>& h,
               const std::vector<double>& wout) {
  const Shape& s = p.s;
  const std::vector<double> ref_h = ToDouble(p.ref_h);
  const std::vector<double> ref_wout = ToDouble(p.ref_wout);
  Naive out;
  out.dh.assign(size_t{1} * s.N * s.C, 0.0);
  out.dwout.assign(size_t{1} * s.V * s.C, 0.0);
  for (int n = 0; n < s.N; ++n) {
    const std::vector<double> z = Logits(h, wout, n, s.C, s.V);
    const std::vector<double> zr = Logits(ref_h, ref_wout, n, s.RC, s.V);
    const double lse = Lse(z), ref_lse = Lse(zr);
    double kl = 0, zs = 0, zrs = 0, entropy = 0;
    std::vector<double> dz(s.V);
    for (int v = 0; v < s.V; ++v) {
      const double pi = std::exp(z[v] - lse), pr = std::exp(zr[v] - ref_lse);
      kl += pr * ((z[v] - lse) - (zr[v] - ref_lse));
      entropy -= pi * (z[v] - lse);
      zs += z[v];
      zrs += zr[v];
      dz[v] = p.a[n] * (pi - (v == p.labels[n])) + p.b[n] * (pi - pr);
    }
    out.lse.push_back(lse);
    out.ref_lse.push_back(ref_lse);
    out.logp.push_back(z[p.labels[n]] - lse);
    out.ref_logp.push_back(zr[p.labels[n]] - ref_lse);
    out.kl.push_back(kl);
    out.logit_sum.push_back(zs);
    out.ref_logit_sum.push_back(zrs);
    out.entropy.push_back(entropy);
    for (int v = 0; v < s.V; ++v) {
      for (int c = 0; c < s.C; ++c) {
        out.dh[size_t{1} * n * s.C + c] +=
            dz[v] * wout[size_t{1} * v * s.C + c];
        out.dwout[size_t{1} * v * s.C + c] +=
            dz[v] * h[size_t{1} * n * s.C + c];
      }
    }
  }
  return out;
}

// Σ_n −(A_n ℓ_n + B_n K_n) at (h, wout).
double Objective(const Problem& p, const std::vector<double>& h,
                 const std::vector<double>& wout) {
  const Naive n = NaiveAll(p, h, wout);
  double f = 0;
  for (int i = 0; i < p.s.N; ++i) f -= p.a[i] * n.logp[i] + p.b[i] * n.kl[i];
  return f;
}

struct Stats {
  std::vector<float> lse, ref_lse, logp, ref_logp, kl, logit_sum, ref_logit_sum,
      entropy;
  explicit Stats(int N)
      : lse(N),
        ref_lse(N),
        logp(N),
        ref_logp(N),
        kl(N),
        logit_sum(N),
        ref_logit_sum(N),
        entropy(N) {}
  SparsePoRowStats Out() {
    return {lse.data(), ref_lse.data(),   logp.data(),          ref_logp.data(),
            kl.data(),  logit_sum.data(), ref_logit_sum.data(), entropy.data()};
  }
};

Stats RunForward(const Problem& p) {
  Stats st(p.s.N);
  std::vector<float> buf(size_t{1} * p.s.chunk * p.s.V);
  std::vector<float> ref_buf(buf.size());
  SparsePoOutputForward(p.Layers(), p.labels.data(), p.s.N, buf.data(),
                        ref_buf.data(), p.s.chunk, st.Out());
  return st;
}

// Runs pass 2, accumulating into dh and dwout (either may be null).
void RunBackward(const Problem& p, const Stats& st, std::vector<float>* dh,
                 std::vector<float>* dwout) {
  std::vector<float> buf(size_t{1} * p.s.chunk * p.s.V);
  std::vector<float> ref_buf(buf.size());
  SparsePoOutputBackward(p.Layers(), p.labels.data(), p.s.N, st.lse.data(),
                         st.ref_lse.data(), p.a.data(), p.b.data(), buf.data(),
                         ref_buf.data(), p.s.chunk,
                         dh == nullptr ? nullptr : dh->data(),
                         dwout == nullptr ? nullptr : dwout->data());
}

double MaxAbsDiff(const std::vector<float>& a, const std::vector<double>& b) {
  double m = 0;
  for (size_t i = 0; i < b.size(); ++i) m = std::max(m, std::fabs(a[i] - b[i]));
  return m;
}

std::vector<float> ToFloat(const std::vector<double>& x) {
  return std::vector<float>(x.begin(), x.end());
}

class FusedSparsePo : public ::testing::TestWithParam<Shape> {};

TEST_P(FusedSparsePo, MatchesMaterializedReference) {
  const Problem p = MakeProblem(GetParam(), 11);
  const Naive ref = NaiveAll(p, ToDouble(p.h), ToDouble(p.wout));
  const Stats st = RunForward(p);
  EXPECT_LT(MaxAbsDiff(st.lse, ref.lse), 2e-5);
  EXPECT_LT(MaxAbsDiff(st.ref_lse, ref.ref_lse), 2e-5);
  EXPECT_LT(MaxAbsDiff(st.logp, ref.logp), 2e-5);
  EXPECT_LT(MaxAbsDiff(st.ref_logp, ref.ref_logp), 2e-5);
  EXPECT_LT(MaxAbsDiff(st.kl, ref.kl), 2e-5);
  EXPECT_LT(MaxAbsDiff(st.entropy, ref.entropy), 2e-5);
  EXPECT_LT(ErrorVsScale(st.logit_sum, ToFloat(ref.logit_sum)), 1e-5);
  EXPECT_LT(ErrorVsScale(st.ref_logit_sum, ToFloat(ref.ref_logit_sum)), 1e-5);
  for (float k : st.kl) EXPECT_LE(k, 1e-6f);

  // Backward accumulates onto what the buffers already hold.
  const std::vector<float> dh0 = RandomNormal(p.h.size(), 21);
  const std::vector<float> dw0 = RandomNormal(p.wout.size(), 22);
  std::vector<float> dh = dh0, dw = dw0;
  RunBackward(p, st, &dh, &dw);
  EXPECT_LT(ErrorVsScale(Delta(dh, dh0), ToFloat(ref.dh)), 1e-5);
  EXPECT_LT(ErrorVsScale(Delta(dw, dw0), ToFloat(ref.dwout)), 1e-5);
}

TEST_P(FusedSparsePo, DeterministicAcrossRuns) {
  const Problem p = MakeProblem(GetParam(), 12);
  const Stats s1 = RunForward(p), s2 = RunForward(p);
  EXPECT_EQ(s1.kl, s2.kl);
  EXPECT_EQ(s1.lse, s2.lse);
  std::vector<float> dh1(p.h.size(), 0.f), dw1(p.wout.size(), 0.f);
  std::vector<float> dh2 = dh1, dw2 = dw1;
  RunBackward(p, s1, &dh1, &dw1);
  RunBackward(p, s2, &dh2, &dw2);
  EXPECT_EQ(dh1, dh2);
  EXPECT_EQ(dw1, dw2);
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, FusedSparsePo,
    ::testing::Values(
        // Odd sizes: V not a multiple of 8, N not a multiple of chunk, the
        // reference narrower than the policy. Single-threaded.
        Shape{13, 24, 16, 101, 4},
        // One chunk holds every row.
        Shape{5, 8, 8, 11, 64},
        // Large enough for the OpenMP path, V over one summation block.
        Shape{64, 64, 48, 1031, 16}));

TEST(FusedSparsePoGradient, MatchesFiniteDifferences) {
  const Problem p = MakeProblem(Shape{7, 12, 10, 37, 3}, 31);
  const Stats st = RunForward(p);
  std::vector<float> dh(p.h.size(), 0.f), dw(p.wout.size(), 0.f);
  RunBackward(p, st, &dh, &dw);

  const std::vector<double> h = ToDouble(p.h), w = ToDouble(p.wout);
  const double eps = 1e-4;
  auto central = [&](bool wrt_h, size_t i) {
    std::vector<double> hp = h, wp = w, hm = h, wm = w;
    (wrt_h ? hp : wp)[i] += eps;
    (wrt_h ? hm : wm)[i] -= eps;
    return (Objective(p, hp, wp) - Objective(p, hm, wm)) / (2 * eps);
  };
  double scale_h = 0, scale_w = 0;
  for (float x : dh) scale_h = std::max(scale_h, std::fabs(double{x}));
  for (float x : dw) scale_w = std::max(scale_w, std::fabs(double{x}));
  for (size_t i = 0; i < h.size(); i += 5) {
    EXPECT_NEAR(dh[i], central(true, i), 1e-5 * scale_h) << "dh " << i;
  }
  for (size_t i = 0; i < w.size(); i += 7) {
    EXPECT_NEAR(dw[i], central(false, i), 1e-5 * scale_w) << "dwout " << i;
  }
}

TEST(FusedSparsePoEdges, IdenticalModelsGiveZeroKl) {
  Problem p = MakeProblem(Shape{9, 16, 16, 53, 4}, 41);
  p.ref_h = p.h;
  p.ref_wout = p.wout;
  const Stats st = RunForward(p);
  for (int n = 0; n < p.s.N; ++n) {
    EXPECT_EQ(st.kl[n], 0.0f) << n;
    EXPECT_EQ(st.logp[n], st.ref_logp[n]) << n;
  }
}

TEST(FusedSparsePoEdges, ZeroCoefficientRowsAndNullOutputs) {
  Problem p = MakeProblem(Shape{11, 16, 12, 29, 4}, 51);
  // Rows 0, 4, 5 and 10 carry no loss: skipped, they cut the rows into the
  // chunks [1, 4) and [6, 10). Rows 1 and 6, which start those chunks, have
  // no KL term, while the rows after them do.
  for (int n : {0, 4, 5, 10}) p.a[n] = p.b[n] = 0.0f;
  for (int n : {1, 6}) p.b[n] = 0.0f;
  const Stats st = RunForward(p);
  const Naive ref = NaiveAll(p, ToDouble(p.h), ToDouble(p.wout));
  std::vector<float> dh(p.h.size(), 0.f);
  RunBackward(p, st, &dh, nullptr);
  EXPECT_LT(ErrorVsScale(dh, ToFloat(ref.dh)), 1e-5);
  for (int n : {0, 4, 5, 10}) {
    for (int c = 0; c < p.s.C; ++c) EXPECT_EQ(dh[n * p.s.C + c], 0.0f);
  }
  std::vector<float> dw(p.wout.size(), 0.f);
  RunBackward(p, st, nullptr, &dw);
  EXPECT_LT(ErrorVsScale(dw, ToFloat(ref.dwout)), 1e-5);

  // With B = 0 on every row the reference logits are never recomputed; the
  // gradient is then A(π − onehot) alone.
  for (float& b : p.b) b = 0.0f;
  const Naive ref_a = NaiveAll(p, ToDouble(p.h), ToDouble(p.wout));
  std::vector<float> dh_a(p.h.size(), 0.f);
  RunBackward(p, st, &dh_a, nullptr);
  EXPECT_LT(ErrorVsScale(dh_a, ToFloat(ref_a.dh)), 1e-5);
}

}  // namespace
}  // namespace prefopt::kernels::cpu
