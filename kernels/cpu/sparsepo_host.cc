#include "kernels/cpu/sparsepo_host.h"

#include <algorithm>
#include <cmath>

#include "kernels/sparsepo_math.h"

namespace prefopt::kernels::cpu {
namespace {

// Per-thread work below this many multiply-adds is not worth the threads.
constexpr double kMinParallelMacs = 1 << 18;

// Per (layer, row) the pre-activation and normalization statistics, into
// scratch->stats (layer-major).
void PreActivations(const float* hidden, int rows, const float* params,
                    const SparsePoMaskNetShape& shape,
                    SparsePoScratch* scratch) {
  const int L = shape.layers, H = shape.hidden;
  const float* gamma = params + shape.ln_weight();
  const float* shift = params + shape.ln_bias();
  // w_lᵀ LN(h) + b_l = rstd · Σ_c (w_l γ)_c (h_c − μ) + (w_lᵀ β + b_l): the
  // affine part folds into the weights once per call.
  std::vector<double>& wg = scratch->folded_w;
  std::vector<double>& offset = scratch->folded_offset;
  wg.resize(static_cast<size_t>(L) * H);
  offset.resize(L);
  for (int l = 0; l < L; ++l) {
    const float* w = params + shape.w(l);
    double o = params[shape.b() + l];
    for (int c = 0; c < H; ++c) {
      wg[static_cast<size_t>(l) * H + c] = static_cast<double>(w[c]) * gamma[c];
      o += static_cast<double>(w[c]) * shift[c];
    }
    offset[l] = o;
  }
  std::vector<SparsePoScratch::RowStats>& stats = scratch->stats;
  stats.resize(static_cast<size_t>(L) * rows);
  const double eps = shape.eps;
#pragma omp parallel for schedule(static) if (double{1} * rows * L * H >= \
                                              kMinParallelMacs)
  for (int t = 0; t < rows; ++t) {
    for (int l = 0; l < L; ++l) {
      const float* h = hidden + (static_cast<size_t>(l) * rows + t) * H;
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
      stats[static_cast<size_t>(l) * rows + t] = {rstd * dot + offset[l], mean,
                                                  rstd};
    }
  }
}

// The mixer's output Σ_l c_l ReLU(a_l) of row t (before the outer ReLU).
double Mixed(const SparsePoScratch& scratch, const float* c, int layers,
             int rows, int t) {
  double m = 0;
  for (int l = 0; l < layers; ++l) {
    m += c[l] *
         std::max(0.0, scratch.stats[static_cast<size_t>(l) * rows + t].a);
  }
  return m;
}

}  // namespace

void SparsePoMaskForward(float* mask, const float* hidden, int rows,
                         const float* params, const SparsePoMaskNetShape& shape,
                         SparsePoScratch* scratch) {
  PreActivations(hidden, rows, params, shape, scratch);
  const float* c = params + shape.c();
  for (int t = 0; t < rows; ++t) {
    mask[t] = static_cast<float>(
        std::max(0.0, Mixed(*scratch, c, shape.layers, rows, t)));
  }
}

void SparsePoMaskBackward(float* grads, const float* dmask, const float* hidden,
                          int rows, const float* params,
                          const SparsePoMaskNetShape& shape,
                          SparsePoScratch* scratch) {
  PreActivations(hidden, rows, params, shape, scratch);
  const int L = shape.layers, H = shape.hidden;
  const float* c = params + shape.c();
  const float* gamma = params + shape.ln_weight();
  const float* shift = params + shape.ln_bias();
  const std::vector<SparsePoScratch::RowStats>& stats = scratch->stats;

  // ∂loss/∂(mixer output) per row: the outer ReLU passes it where positive.
  std::vector<double>& g = scratch->row_grad;
  g.resize(rows);
  for (int t = 0; t < rows; ++t) {
    g[t] = Mixed(*scratch, c, L, rows, t) > 0 ? dmask[t] : 0.0;
  }

  // Per layer: dc_l = Σ_t g_t ReLU(a), da = g_t c_l 1[a > 0], db_l = Σ_t da,
  // and X_l = Σ_t da · LN-normalized h (before the affine), from which dw_l
  // and the LayerNorm gradients follow without another pass over the rows.
  std::vector<double>& dc = scratch->dc;
  std::vector<double>& db = scratch->db;
  std::vector<double>& x = scratch->x;
  dc.resize(L);
  db.resize(L);
  x.assign(static_cast<size_t>(L) * H, 0.0);
#pragma omp parallel for schedule(static) if (double{1} * rows * L * H >= \
                                              kMinParallelMacs)
  for (int l = 0; l < L; ++l) {
    double* xl = x.data() + static_cast<size_t>(l) * H;
    double dcl = 0, dbl = 0;
    for (int t = 0; t < rows; ++t) {
      const SparsePoScratch::RowStats& s =
          stats[static_cast<size_t>(l) * rows + t];
      if (s.a <= 0 || g[t] == 0) continue;
      dcl += g[t] * s.a;
      const double da = g[t] * c[l];
      dbl += da;
      const float* h = hidden + (static_cast<size_t>(l) * rows + t) * H;
      const double scale = da * s.rstd;
      for (int ch = 0; ch < H; ++ch) xl[ch] += scale * (h[ch] - s.mean);
    }
    dc[l] = dcl;
    db[l] = dbl;
  }

  // LN(h) = x̂ γ + β, so ∂a/∂w = x̂ γ + β, ∂a/∂γ = w x̂ and ∂a/∂β = w; the
  // shared LayerNorm sums over the layers (in layer order).
  std::vector<double>& dgamma = scratch->dgamma;
  std::vector<double>& dshift = scratch->dshift;
  dgamma.assign(H, 0.0);
  dshift.assign(H, 0.0);
  for (int l = 0; l < L; ++l) {
    const float* w = params + shape.w(l);
    const double* xl = x.data() + static_cast<size_t>(l) * H;
    float* dw = grads + shape.w(l);
    for (int ch = 0; ch < H; ++ch) {
      dw[ch] += static_cast<float>(gamma[ch] * xl[ch] + shift[ch] * db[l]);
      dgamma[ch] += w[ch] * xl[ch];
      dshift[ch] += w[ch] * db[l];
    }
    grads[shape.b() + l] += static_cast<float>(db[l]);
    grads[shape.c() + l] += static_cast<float>(dc[l]);
  }
  for (int ch = 0; ch < H; ++ch) {
    grads[shape.ln_weight() + ch] += static_cast<float>(dgamma[ch]);
    grads[shape.ln_bias() + ch] += static_cast<float>(dshift[ch]);
  }
}

void MapoMask(float* mask, const float* scores, int rows,
              const MapoGroup* map_groups, int num_maps,
              const MapoGroup* groups, int num_groups, const SeqSpan* spans,
              int num_spans, SparsePoScratch* scratch) {
  for (int s = 0; s < num_spans; ++s) {
    const SeqSpan span = spans[s];
    scratch->mapo.resize(
        std::max(scratch->mapo.size(), 3 * static_cast<size_t>(span.len)));
    sparsepo_math::HostMapoSequenceMask(
        span.len, map_groups, num_maps, groups, num_groups,
        [&](int i, int t) -> double {
          return scores[static_cast<size_t>(i) * rows + span.start + t];
        },
        scratch->mapo.data(), mask + span.start);
  }
}

void SparsePoCoefficients(const SparsePoRowOutputs& out, double* metrics,
                          const SparsePoRowInputs& in, const SeqSpan* spans,
                          int num_pairs, const SparsePoParams& p) {
  auto reward = [&](int r) {
    return in.mask_reward != nullptr ? in.mask_reward[r] : 1.0f;
  };
  auto kl_mask = [&](int r) {
    return in.mask_kl != nullptr ? in.mask_kl[r] : 1.0f;
  };
  float unused;
  for (int i = 0; i < num_pairs; ++i) {
    sparsepo_math::ResponseSums sums[2];
    for (int j = 0; j < 2; ++j) {
      const SeqSpan span = spans[2 * i + j];
      for (int r = span.start; r < span.start + span.len; ++r) {
        sparsepo_math::AddRow(p, in.logp[r], in.ref_logp[r], in.kl[r],
                              in.logit_sum[r], in.entropy[r], reward(r),
                              kl_mask(r), &sums[j]);
      }
    }
    const double g = sparsepo_math::Pair(p, sums[0], sums[1], metrics);
    for (int j = 0; j < 2; ++j) {
      const SeqSpan span = spans[2 * i + j];
      for (int r = span.start; r < span.start + span.len; ++r) {
        sparsepo_math::Row(
            p, g, j == 0 ? 1.0 : -1.0, in.logp[r], in.ref_logp[r], in.kl[r],
            reward(r), kl_mask(r), &out.coef_a[r], &out.coef_b[r],
            out.dmask_reward != nullptr ? &out.dmask_reward[r] : &unused,
            out.dmask_kl != nullptr ? &out.dmask_kl[r] : &unused);
      }
    }
  }
}

}  // namespace prefopt::kernels::cpu
