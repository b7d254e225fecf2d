// SparsePO's per-row and per-pair math (docs/objectives.md §2) and MaPO's
// score rescaling, in double precision, written once for the host and the
// device: Backend::SparsePoCoefficients and Backend::MapoMask on every
// backend, and the host objectives (trainer/objectives/sparsepo.cc,
// mapo_masks.cc), which are tested against the official code's values and are
// the reference the backends are tested against.
#ifndef PREFOPT_KERNELS_SPARSEPO_MATH_H_
#define PREFOPT_KERNELS_SPARSEPO_MATH_H_

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "kernels/backend.h"
#include "kernels/objective_math.h"

namespace prefopt::kernels::sparsepo_math {

// ---- the pair objective ----

// m^u_t as the loss reads it: the reward mask, or 1 when the reward is not
// masked. `reward` is the common mask or m^u.
PREFOPT_HOST_DEVICE inline float RewardMask(const SparsePoParams& p,
                                            float reward) {
  return p.mask_on_reward ? reward : 1.0f;
}

// m^d_t: the common mask or the independent KL mask, or 1 when the KL term
// is not masked.
PREFOPT_HOST_DEVICE inline float KlMask(const SparsePoParams& p, float reward,
                                        float kl) {
  if (!p.mask_on_kl) return 1.0f;
  return p.common_mask ? reward : kl;
}

// Whether the loss reads the stored reward mask (the common mask, or m^u) and
// the stored independent KL mask m^d: those masks get gradients and their
// mask/* and mask/kl_* metrics are reported.
PREFOPT_HOST_DEVICE inline bool ReadsRewardMask(const SparsePoParams& p) {
  return p.common_mask || p.mask_on_reward;
}
PREFOPT_HOST_DEVICE inline bool ReadsKlMask(const SparsePoParams& p) {
  return !p.common_mask && p.mask_on_kl;
}

// The L1 weight of the common mask or of m^u: a common mask is penalized
// once, with the mean weight of the terms it masks.
PREFOPT_HOST_DEVICE inline double RewardL1Weight(const SparsePoParams& p) {
  if (p.common_mask && p.mask_on_kl) {
    return p.mask_on_reward ? 0.5 * (p.l1_reward + p.l1_kl) : p.l1_kl;
  }
  return p.l1_reward;
}

PREFOPT_HOST_DEVICE inline double Sign(float m) {
  return m > 0 ? 1.0 : (m < 0 ? -1.0 : 0.0);
}

// One response's sums over its tokens.
struct ResponseSums {
  double masked_ratio = 0;  // U = Σ m^u (ℓ − ℓ̃)
  double masked_kl = 0;     // D = Σ m^d K
  double kl = 0;            // Σ K
  double logp = 0;          // Σ ℓ
  double logit_sum = 0;     // Σ_t Σ_v z
  double entropy = 0;       // Σ entropy
  // The common mask or m^u, and the independent m^d: zeros, sum, L1 norm.
  double reward_zeros = 0, reward_sum = 0, reward_l1 = 0;
  double kl_zeros = 0, kl_sum = 0, kl_l1 = 0;
};
inline constexpr int kResponseSumValues = 12;
static_assert(sizeof(ResponseSums) == kResponseSumValues * sizeof(double));

// Adds token t's values to its response's sums. `reward` and `kl` are the
// stored masks (read only where the options use them).
PREFOPT_HOST_DEVICE inline void AddRow(const SparsePoParams& p, float logp,
                                       float ref_logp, float kl,
                                       float logit_sum, float entropy,
                                       float reward, float kl_mask,
                                       ResponseSums* s) {
  const double ratio = static_cast<double>(logp) - ref_logp;
  s->masked_ratio += RewardMask(p, reward) * ratio;
  s->masked_kl += KlMask(p, reward, kl_mask) * static_cast<double>(kl);
  s->kl += kl;
  s->logp += logp;
  s->logit_sum += logit_sum;
  s->entropy += entropy;
  if (ReadsRewardMask(p)) {
    s->reward_zeros += reward == 0.0f ? 1.0 : 0.0;
    s->reward_sum += reward;
    s->reward_l1 += fabs(static_cast<double>(reward));
  }
  if (ReadsKlMask(p)) {
    s->kl_zeros += kl_mask == 0.0f ? 1.0 : 0.0;
    s->kl_sum += kl_mask;
    s->kl_l1 += fabs(static_cast<double>(kl_mask));
  }
}

// One pair's loss, with Δ = [U_w − U_l] − [D_w − D_l]:
//   softplus(−βΔ) + c_u(‖m^u_w‖₁ + ‖m^u_l‖₁) + c_d(‖m^d_w‖₁ + ‖m^d_l‖₁).
// Adds its metric values (SparsePoMetric order, not yet divided by any
// count) to metrics[kSparsePoMetricCount] and returns g = ∂/∂Δ of the
// softplus term, −β σ(−βΔ).
PREFOPT_HOST_DEVICE inline double Pair(const SparsePoParams& p,
                                       const ResponseSums& w,
                                       const ResponseSums& l, double* metrics) {
  const double delta =
      (w.masked_ratio - l.masked_ratio) - (w.masked_kl - l.masked_kl);
  const double l1 = RewardL1Weight(p) * (w.reward_l1 + l.reward_l1) +
                    (p.common_mask ? 0.0 : p.l1_kl * (w.kl_l1 + l.kl_l1));
  const double loss = objective_math::Softplus(-p.beta * delta) + l1;
  // The official code's rewards: β(U + D) (D ≤ 0).
  const double reward_w = p.beta * (w.masked_ratio + w.masked_kl);
  const double reward_l = p.beta * (l.masked_ratio + l.masked_kl);
  metrics[kSparsePoLoss] += loss;
  metrics[kSparsePoRewardsChosen] += reward_w;
  metrics[kSparsePoRewardsRejected] += reward_l;
  metrics[kSparsePoRewardsMargins] += reward_w - reward_l;
  metrics[kSparsePoRewardsAccuracies] += reward_w > reward_l ? 1.0 : 0.0;
  metrics[kSparsePoLogpsChosen] += w.logp;
  metrics[kSparsePoLogpsRejected] += l.logp;
  metrics[kSparsePoLogitsChosen] += w.logit_sum;
  metrics[kSparsePoLogitsRejected] += l.logit_sum;
  metrics[kSparsePoKlChosen] += -w.masked_kl;
  metrics[kSparsePoKlRejected] += -l.masked_kl;
  metrics[kSparsePoKlUnmaskedChosen] += -w.kl;
  metrics[kSparsePoKlUnmaskedRejected] += -l.kl;
  metrics[kSparsePoMaskZeros] += w.reward_zeros + l.reward_zeros;
  metrics[kSparsePoMaskSum] += w.reward_sum + l.reward_sum;
  metrics[kSparsePoMaskL1] += w.reward_l1 + l.reward_l1;
  metrics[kSparsePoKlMaskZeros] += w.kl_zeros + l.kl_zeros;
  metrics[kSparsePoKlMaskSum] += w.kl_sum + l.kl_sum;
  metrics[kSparsePoKlMaskL1] += w.kl_l1 + l.kl_l1;
  metrics[kSparsePoEntropy] += w.entropy + l.entropy;
  return -p.beta * objective_math::Sigmoid(-p.beta * delta);
}

// One token's outputs, with g from Pair and sign = +1 in the chosen response,
// −1 in the rejected one (Δ holds +U_w − D_w and −U_l + D_l):
//   A = −g·sign·m^u / P,  B = +g·sign·m^d / P,
//   ∂/∂m^u = (g·sign·r + c_u·sign(m^u)) / P,
//   ∂/∂m^d = (−g·sign·K + c_d·sign(m^d)) / P,
// a common mask taking the sum of the two rows with one L1 term. A term that
// is not masked gets no mask gradient; dmask_reward / dmask_kl are written
// only where their mask is read.
PREFOPT_HOST_DEVICE inline void Row(const SparsePoParams& p, double g,
                                    double sign, float logp, float ref_logp,
                                    float kl, float reward, float kl_mask,
                                    float* coef_a, float* coef_b,
                                    float* dmask_reward, float* dmask_kl) {
  const double inv_pairs = 1.0 / p.denominator;
  const double gs = g * sign;
  const float mu = RewardMask(p, reward), md = KlMask(p, reward, kl_mask);
  const double ratio = static_cast<double>(logp) - ref_logp;
  *coef_a = static_cast<float>(-gs * mu * inv_pairs);
  *coef_b = static_cast<float>(gs * md * inv_pairs);
  const double du = p.mask_on_reward ? gs * ratio : 0.0;
  const double dd = p.mask_on_kl ? -gs * kl : 0.0;
  if (p.common_mask) {
    *dmask_reward = static_cast<float>(
        (du + dd + RewardL1Weight(p) * Sign(reward)) * inv_pairs);
    return;
  }
  if (p.mask_on_reward) {
    *dmask_reward =
        static_cast<float>((du + p.l1_reward * Sign(mu)) * inv_pairs);
  }
  if (p.mask_on_kl) {
    *dmask_kl = static_cast<float>((dd + p.l1_kl * Sign(md)) * inv_pairs);
  }
}

// ---- MaPO's rescaling ----

// x rounded to the nearest IEEE half-precision value (ties to even; beyond
// the largest half, ±infinity), as torch's float32 → float16 conversion,
// returned as a float (which holds every half exactly).
PREFOPT_HOST_DEVICE inline float RoundToHalf(float x) {
  uint32_t bits;
  memcpy(&bits, &x, sizeof(bits));
  const uint32_t sign = bits & 0x80000000u;
  uint32_t magnitude = bits & 0x7fffffffu;
  if (magnitude >= 0x7f800000u) return x;  // ±infinity, NaN
  // 65520, halfway between the largest half (65504) and 2^16, rounds to
  // infinity (ties to even).
  if (magnitude >= 0x477ff000u) {
    const uint32_t inf = sign | 0x7f800000u;
    float out;
    memcpy(&out, &inf, sizeof(out));
    return out;
  }
  if (magnitude < 0x38800000u) {
    // Below the smallest normal half, 2^-14: multiples of 2^-24. Scaling by
    // powers of two is exact, and rint rounds ties to even.
    constexpr float kScale = 16777216.0f;  // 2^24
    const float rounded = rintf(fabsf(x) * kScale) / kScale;
    return sign ? -rounded : rounded;
  }
  // A normal half keeps 10 of the float's 23 mantissa bits.
  magnitude += 0xfffu + ((magnitude >> 13) & 1u);
  magnitude &= ~0x1fffu;
  const uint32_t out_bits = sign | magnitude;
  float out;
  memcpy(&out, &out_bits, sizeof(out));
  return out;
}

// The official "zn_rescale" of one map's scores over a sequence's `rows`
// tokens: from the scores' mean and sum of squared deviations, the standard
// deviation (unbiased, rounded to half precision); false when the map
// carries no ranking (fewer than two rows, or a deviation that is not a
// positive finite half).
PREFOPT_HOST_DEVICE inline bool MapoStdDev(double squares, int rows,
                                           double* std_dev) {
  if (rows < 2) return false;
  *std_dev = RoundToHalf(static_cast<float>(sqrt(squares / (rows - 1))));
  return *std_dev > 0 && isfinite(*std_dev);
}

// From the z-scores' minimum and maximum, the min–max rescaling's offset
// (the minimum in half precision) and range (the two halves' difference,
// rounded again, as the official code subtracts in half precision); false
// when the range is not positive.
PREFOPT_HOST_DEVICE inline bool MapoRange(double lo, double hi, double* min,
                                          double* range) {
  *min = RoundToHalf(static_cast<float>(lo));
  *range = RoundToHalf(
      static_cast<float>(RoundToHalf(static_cast<float>(hi)) - *min));
  return *range > 0;
}

// Rescales scores[rows] in place (z-normalized, then min–max) and returns
// true, or returns false, leaving them unspecified, when the map carries no
// ranking.
inline bool RescaleMapoScores(double* scores, int rows) {
  if (rows < 2) return false;
  double mean = 0;
  for (int t = 0; t < rows; ++t) mean += scores[t];
  mean /= rows;
  double squares = 0;
  for (int t = 0; t < rows; ++t) {
    squares += (scores[t] - mean) * (scores[t] - mean);
  }
  double std_dev;
  if (!MapoStdDev(squares, rows, &std_dev)) return false;
  double lo = INFINITY, hi = -INFINITY;
  for (int t = 0; t < rows; ++t) {
    scores[t] = (scores[t] - mean) / std_dev;
    lo = fmin(lo, scores[t]);
    hi = fmax(hi, scores[t]);
  }
  double min, range;
  if (!MapoRange(lo, hi, &min, &range)) return false;
  for (int t = 0; t < rows; ++t) scores[t] = (scores[t] - min) / range;
  return true;
}

// MaPO's mask of one sequence's `rows` rows (docs/objectives.md §2): each
// map's scores (score(i, t), map i's score of row t) rescaled over the rows,
// a map without ranking counting as all ones; the maps of each selected group
// averaged; the mask the mean of the groups' averages. `work` holds 3 × rows
// doubles. A selected group without maps is the caller's to refuse.
template <typename Score>
inline void HostMapoSequenceMask(int rows, const MapoGroup* map_groups,
                                 int num_maps, const MapoGroup* groups,
                                 int num_groups, Score score, double* work,
                                 float* mask) {
  double* total = work;
  double* group_sum = work + rows;
  double* scores = work + 2 * static_cast<size_t>(rows);
  for (int t = 0; t < rows; ++t) total[t] = 0;
  for (int g = 0; g < num_groups; ++g) {
    for (int t = 0; t < rows; ++t) group_sum[t] = 0;
    int count = 0;
    for (int i = 0; i < num_maps; ++i) {
      if (map_groups[i] != groups[g]) continue;
      for (int t = 0; t < rows; ++t) scores[t] = score(i, t);
      const bool ranked = RescaleMapoScores(scores, rows);
      for (int t = 0; t < rows; ++t) group_sum[t] += ranked ? scores[t] : 1.0;
      ++count;
    }
    if (count == 0) continue;
    for (int t = 0; t < rows; ++t) total[t] += group_sum[t] / count;
  }
  for (int t = 0; t < rows; ++t) {
    mask[t] = static_cast<float>(total[t] / num_groups);
  }
}

}  // namespace prefopt::kernels::sparsepo_math

#endif  // PREFOPT_KERNELS_SPARSEPO_MATH_H_
