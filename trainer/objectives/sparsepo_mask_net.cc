#include "trainer/objectives/sparsepo_mask_net.h"

#include <algorithm>
#include <cmath>

#include "trainer/objectives/length_check.h"

namespace prefopt::objectives {
namespace {

// Per-thread work below this many multiply-adds is not worth the threads.
constexpr double kMinParallelMacs = 1 << 18;

}  // namespace

SparsePoMaskNet::SparsePoMaskNet(const std::string& name, int num_layers,
                                 int hidden, float ln_eps)
    : L_(num_layers), H_(hidden), ln_eps_(ln_eps) {
  auto add = [&](const std::string& suffix, int64_t n, bool decayed,
                 model::Init init) {
    model::ParamTensor t;
    t.name = name + "." + suffix;
    t.shape = {n};
    t.is_norm_or_bias = !decayed;
    t.init = init;
    return layout_.Add(std::move(t));
  };
  ln_w_ = add("ln.weight", H_, false, model::Init::kOnes);
  ln_b_ = add("ln.bias", H_, false, model::Init::kZeros);
  for (int l = 0; l < L_; ++l) {
    w_.push_back(add("w." + std::to_string(l), H_, true, model::Init::kNormal));
  }
  b_ = add("b", L_, false, model::Init::kZeros);
  c_ = add("c", L_, true, model::Init::kNormal);
  params_.assign(layout_.total(), 0.0f);
  grads_.assign(layout_.total(), 0.0f);
}

void SparsePoMaskNet::Init(util::Rng* rng, double init_std) {
  std::fill(params_.begin(), params_.end(), 0.0f);
  for (const model::ParamTensor& t : layout_.tensors()) {
    float* p = params_.data() + t.offset;
    for (size_t i = 0; i < t.numel; ++i) {
      switch (t.init) {
        case model::Init::kNormal:
          p[i] = static_cast<float>(init_std * rng->Normal());
          break;
        case model::Init::kOnes:
          p[i] = 1.0f;
          break;
        case model::Init::kZeros:
          p[i] = 0.0f;
          break;
      }
    }
  }
  ZeroGrads();
}

void SparsePoMaskNet::ZeroGrads() {
  std::fill(grads_.begin(), grads_.end(), 0.0f);
}

void SparsePoMaskNet::PreActivations(absl::Span<const float* const> hidden,
                                     int rows) const {
  CheckSameLength("SparsePoMaskNet", "hidden (layers)", L_, hidden.size());
  const float* gamma = params_.data() + ln_w_;
  const float* shift = params_.data() + ln_b_;
  // w_lᵀ LN(h) + b_l = rstd · Σ_c (w_l γ)_c (h_c − μ) + (w_lᵀ β + b_l): the
  // affine part folds into the weights once per call.
  std::vector<double>& wg = folded_w_;
  std::vector<double>& offset = folded_offset_;
  wg.resize(static_cast<size_t>(L_) * H_);
  offset.resize(L_);
  for (int l = 0; l < L_; ++l) {
    const float* w = params_.data() + w_[l];
    double o = params_[b_ + l];
    for (int c = 0; c < H_; ++c) {
      wg[static_cast<size_t>(l) * H_ + c] =
          static_cast<double>(w[c]) * gamma[c];
      o += static_cast<double>(w[c]) * shift[c];
    }
    offset[l] = o;
  }
  scratch_.resize(static_cast<size_t>(L_) * rows);
  const int H = H_;
  const double eps = ln_eps_;
#pragma omp parallel for schedule(static) if (double{1} * rows * L_ * H_ >= \
                                              kMinParallelMacs)
  for (int t = 0; t < rows; ++t) {
    for (int l = 0; l < L_; ++l) {
      const float* h = hidden[l] + static_cast<size_t>(t) * H;
      double sum = 0;
      for (int c = 0; c < H; ++c) sum += h[c];
      const double mean = sum / H;
      double var = 0, dot = 0;
      const double* wl = wg.data() + static_cast<size_t>(l) * H;
      for (int c = 0; c < H; ++c) {
        const double d = h[c] - mean;
        var += d * d;
        dot += wl[c] * d;
      }
      const double rstd = 1.0 / std::sqrt(var / H + eps);
      scratch_[static_cast<size_t>(l) * rows + t] = {rstd * dot + offset[l],
                                                     mean, rstd};
    }
  }
}

void SparsePoMaskNet::Forward(absl::Span<const float* const> hidden, int rows,
                              float* mask) const {
  PreActivations(hidden, rows);
  const float* c = params_.data() + c_;
  for (int t = 0; t < rows; ++t) {
    double m = 0;
    for (int l = 0; l < L_; ++l) {
      m += c[l] * std::max(0.0, scratch_[static_cast<size_t>(l) * rows + t].a);
    }
    mask[t] = static_cast<float>(std::max(0.0, m));
  }
}

void SparsePoMaskNet::Backward(absl::Span<const float* const> hidden, int rows,
                               const float* dmask) {
  PreActivations(hidden, rows);
  const float* c = params_.data() + c_;
  const float* gamma = params_.data() + ln_w_;
  const float* shift = params_.data() + ln_b_;
  auto stats = [&](int l, int t) -> const RowStats& {
    return scratch_[static_cast<size_t>(l) * rows + t];
  };

  // ∂loss/∂(mixer output) per row: the outer ReLU passes it where positive.
  std::vector<double>& g = row_grad_;
  g.resize(rows);
  for (int t = 0; t < rows; ++t) {
    double m = 0;
    for (int l = 0; l < L_; ++l) m += c[l] * std::max(0.0, stats(l, t).a);
    g[t] = m > 0 ? dmask[t] : 0.0;
  }

  // Per layer: dc_l = Σ_t g_t ReLU(a), da = g_t c_l 1[a > 0], db_l = Σ_t da,
  // and X_l = Σ_t da · LN-normalized h (before the affine), from which dw_l
  // and the LayerNorm gradients follow without another pass over the rows.
  std::vector<double>& dc = dc_;
  std::vector<double>& db = db_;
  std::vector<double>& x = x_;
  dc.resize(L_);
  db.resize(L_);
  x.assign(static_cast<size_t>(L_) * H_, 0.0);
  const int H = H_;
#pragma omp parallel for schedule(static) if (double{1} * rows * L_ * H_ >= \
                                              kMinParallelMacs)
  for (int l = 0; l < L_; ++l) {
    double* xl = x.data() + static_cast<size_t>(l) * H;
    double dcl = 0, dbl = 0;
    for (int t = 0; t < rows; ++t) {
      const RowStats& s = stats(l, t);
      if (s.a <= 0 || g[t] == 0) continue;
      dcl += g[t] * s.a;
      const double da = g[t] * c[l];
      dbl += da;
      const float* h = hidden[l] + static_cast<size_t>(t) * H;
      const double scale = da * s.rstd;
      for (int ch = 0; ch < H; ++ch) xl[ch] += scale * (h[ch] - s.mean);
    }
    dc[l] = dcl;
    db[l] = dbl;
  }

  // LN(h) = x̂ γ + β, so ∂a/∂w = x̂ γ + β, ∂a/∂γ = w x̂ and ∂a/∂β = w; the
  // shared LayerNorm sums over the layers (in layer order).
  float* grad = grads_.data();
  std::vector<double>& dgamma = dgamma_;
  std::vector<double>& dshift = dshift_;
  dgamma.assign(H, 0.0);
  dshift.assign(H, 0.0);
  for (int l = 0; l < L_; ++l) {
    const float* w = params_.data() + w_[l];
    const double* xl = x.data() + static_cast<size_t>(l) * H;
    float* dw = grad + w_[l];
    for (int ch = 0; ch < H; ++ch) {
      dw[ch] += static_cast<float>(gamma[ch] * xl[ch] + shift[ch] * db[l]);
      dgamma[ch] += w[ch] * xl[ch];
      dshift[ch] += w[ch] * db[l];
    }
    grad[b_ + l] += static_cast<float>(db[l]);
    grad[c_ + l] += static_cast<float>(dc[l]);
  }
  for (int ch = 0; ch < H; ++ch) {
    grad[ln_w_ + ch] += static_cast<float>(dgamma[ch]);
    grad[ln_b_ + ch] += static_cast<float>(dshift[ch]);
  }
}

}  // namespace prefopt::objectives
