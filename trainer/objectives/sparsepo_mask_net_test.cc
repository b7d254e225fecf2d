// The SparsePO mask network against a plain double-precision transcription of
// m_t = ReLU(Σ_l c_l ReLU(w_lᵀ LN(h_{l,t}) + b_l)), its parameter gradients
// against central finite differences of that transcription, and its layout
// and initialization.
#include "trainer/objectives/sparsepo_mask_net.h"

#include <cmath>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu/cpu_backend.h"

namespace prefopt::objectives {
namespace {

constexpr int kL = 3, kH = 20, kRows = 9;
constexpr float kEps = 1e-5f;

// Parameters in double, read from / indexed like the network's buffer.
double Mask(const std::vector<double>& p, const model::ParamLayout& layout,
            const std::vector<std::vector<float>>& hidden, int t) {
  auto at = [&](const std::string& name) {
    return p.data() + layout.Find(name)->offset;
  };
  const double* gamma = at("m.ln.weight");
  const double* beta = at("m.ln.bias");
  const double* b = at("m.b");
  const double* c = at("m.c");
  double m = 0;
  for (int l = 0; l < kL; ++l) {
    const float* h = hidden[l].data() + t * kH;
    double mean = 0, var = 0;
    for (int i = 0; i < kH; ++i) mean += h[i];
    mean /= kH;
    for (int i = 0; i < kH; ++i) var += (h[i] - mean) * (h[i] - mean);
    const double rstd = 1 / std::sqrt(var / kH + kEps);
    const double* w = at("m.w." + std::to_string(l));
    double a = b[l];
    for (int i = 0; i < kH; ++i) {
      a += w[i] * ((h[i] - mean) * rstd * gamma[i] + beta[i]);
    }
    m += c[l] * std::max(0.0, a);
  }
  return std::max(0.0, m);
}

struct Fixture {
  kernels::CpuBackend backend;
  SparsePoMaskNet net{&backend, "m", kL, kH, kEps};
  std::vector<std::vector<float>> hidden;
  std::vector<float> flat;  // the layers one after the other

  explicit Fixture(uint32_t seed) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> n(0.0f, 1.0f);
    for (int l = 0; l < kL; ++l) {
      std::vector<float> h(kRows * kH);
      // An offset and a scale per row, as residual streams have.
      for (int t = 0; t < kRows; ++t) {
        const float shift = 3 * n(rng), scale = 1 + std::fabs(n(rng));
        for (int i = 0; i < kH; ++i) h[t * kH + i] = shift + scale * n(rng);
      }
      hidden.push_back(std::move(h));
    }
    for (const auto& h : hidden) flat.insert(flat.end(), h.begin(), h.end());
    // Away from the defaults so that every parameter matters, and mixer
    // weights of both signs so that some masks are exactly 0.
    util::Rng r(seed);
    net.Init(&r, 0.5);
    float* p = net.params();
    for (int i = 0; i < kH; ++i) {
      p[net.layout().Find("m.ln.weight")->offset + i] += 0.3f * n(rng);
      p[net.layout().Find("m.ln.bias")->offset + i] = 0.2f * n(rng);
    }
    for (int l = 0; l < kL; ++l) {
      p[net.layout().Find("m.b")->offset + l] = 0.3f * n(rng);
    }
  }

  std::vector<double> Params() const {
    return std::vector<double>(net.params(),
                               net.params() + net.layout().total());
  }
};

TEST(SparsePoMaskNet, ForwardMatchesTranscription) {
  Fixture s(3);
  std::vector<float> mask(kRows);
  s.net.Forward(s.flat.data(), kRows, mask.data());
  const std::vector<double> p = s.Params();
  int zeros = 0;
  for (int t = 0; t < kRows; ++t) {
    EXPECT_NEAR(mask[t], Mask(p, s.net.layout(), s.hidden, t), 1e-5) << t;
    zeros += mask[t] == 0.0f;
  }
  // The test data covers both sides of the outer ReLU.
  EXPECT_GT(zeros, 0);
  EXPECT_LT(zeros, kRows);
}

TEST(SparsePoMaskNet, BackwardMatchesFiniteDifferences) {
  Fixture s(5);
  std::mt19937 rng(9);
  std::normal_distribution<float> n(0.0f, 1.0f);
  std::vector<float> dmask(kRows);
  for (float& d : dmask) d = n(rng);
  // Backward accumulates: start from nonzero gradients.
  std::vector<float> start(s.net.layout().total());
  for (float& g : start) g = n(rng);
  std::copy(start.begin(), start.end(), s.net.grads());
  s.net.Backward(s.flat.data(), kRows, dmask.data());

  // F = Σ_t dmask_t m_t in double; central differences per parameter.
  const std::vector<double> p = s.Params();
  auto objective = [&](const std::vector<double>& q) {
    double f = 0;
    for (int t = 0; t < kRows; ++t) {
      f += dmask[t] * Mask(q, s.net.layout(), s.hidden, t);
    }
    return f;
  };
  int nonzero = 0;
  for (const model::ParamTensor& tensor : s.net.layout().tensors()) {
    for (size_t i = 0; i < tensor.numel; ++i) {
      const size_t j = tensor.offset + i;
      const double h = 1e-6;
      std::vector<double> plus = p, minus = p;
      plus[j] += h;
      minus[j] -= h;
      const double fd = (objective(plus) - objective(minus)) / (2 * h);
      const double got = s.net.grads()[j] - start[j];
      EXPECT_NEAR(got, fd, 1e-4 * std::max(1.0, std::fabs(fd)))
          << tensor.name << "[" << i << "]";
      nonzero += fd != 0;
    }
  }
  EXPECT_GT(nonzero, kL * kH);
}

TEST(SparsePoMaskNet, LayoutAndInit) {
  kernels::CpuBackend backend;
  SparsePoMaskNet net(&backend, "sparsepo_mask", 2, 5, 1e-5f);
  std::vector<std::string> names;
  for (const model::ParamTensor& t : net.layout().tensors()) {
    names.push_back(t.name);
    const bool decayed =
        t.name.find(".w.") != std::string::npos || t.name == "sparsepo_mask.c";
    EXPECT_EQ(t.is_norm_or_bias, !decayed) << t.name;
  }
  EXPECT_EQ(names, (std::vector<std::string>{
                       "sparsepo_mask.ln.weight", "sparsepo_mask.ln.bias",
                       "sparsepo_mask.w.0", "sparsepo_mask.w.1",
                       "sparsepo_mask.b", "sparsepo_mask.c"}));
  EXPECT_EQ(SparsePoMaskNet::kWeightDecay, 0.01);

  util::Rng rng(42);
  net.Init(&rng);
  auto tensor = [&](const std::string& name) {
    const model::ParamTensor* t = net.layout().Find("sparsepo_mask." + name);
    return std::vector<float>(net.params() + t->offset,
                              net.params() + t->offset + t->numel);
  };
  EXPECT_EQ(tensor("ln.weight"), std::vector<float>(5, 1.0f));
  EXPECT_EQ(tensor("ln.bias"), std::vector<float>(5, 0.0f));
  EXPECT_EQ(tensor("b"), std::vector<float>(2, 0.0f));
  // N(0, 0.02²), drawn in layout order from the generator.
  util::Rng replay(42);
  for (const char* name : {"w.0", "w.1", "c"}) {
    for (float x : tensor(name)) {
      EXPECT_EQ(x, static_cast<float>(0.02 * replay.Normal())) << name;
    }
  }
  for (size_t i = 0; i < net.layout().total(); ++i) {
    EXPECT_EQ(net.grads()[i], 0.0f);
  }
}

TEST(SparsePoMaskNet, NoGradientWhereTheMaskIsZero) {
  Fixture s(3);
  std::vector<float> mask(kRows);
  s.net.Forward(s.flat.data(), kRows, mask.data());
  // ∂loss/∂m only on rows whose mask is 0: nothing reaches the parameters.
  std::vector<float> dmask(kRows, 0.0f);
  for (int t = 0; t < kRows; ++t) dmask[t] = mask[t] == 0.0f ? 1.0f : 0.0f;
  s.net.ZeroGrads();
  s.net.Backward(s.flat.data(), kRows, dmask.data());
  for (size_t i = 0; i < s.net.layout().total(); ++i) {
    EXPECT_EQ(s.net.grads()[i], 0.0f);
  }
}

}  // namespace
}  // namespace prefopt::objectives
