// The objectives' per-sequence math as the device computes it
// (Backend::ObjectiveCoefficients, docs/objectives.md §7): DPO's per-pair
// losses and their derivatives w.r.t. the pair's summed policy log-probs
// (§1), SFT's token mean (§5) and implicit-reward SFT's sequence form (§3),
// in double precision, written once for the host and the device. The host
// objectives (trainer/objectives/dpo.cc, sft.cc, implicit_sft.cc) are the
// reference these are
// tested against; this file follows their operations one for one, so both
// give the same doubles from the same sums.
#ifndef PREFOPT_KERNELS_OBJECTIVE_MATH_H_
#define PREFOPT_KERNELS_OBJECTIVE_MATH_H_

#include <math.h>

#include "kernels/backend.h"

#if defined(__CUDACC__)
#define PREFOPT_HOST_DEVICE __host__ __device__
#else
#define PREFOPT_HOST_DEVICE
#endif

namespace prefopt::kernels::objective_math {

// log(1 + e^x).
PREFOPT_HOST_DEVICE inline double Softplus(double x) {
  return fmax(x, 0.0) + log1p(exp(-fabs(x)));
}

// 1 / (1 + e^−x).
PREFOPT_HOST_DEVICE inline double Sigmoid(double x) {
  if (x >= 0) return 1.0 / (1.0 + exp(-x));
  const double e = exp(x);
  return e / (1.0 + e);
}

PREFOPT_HOST_DEVICE inline double LogSigmoid(double x) { return -Softplus(-x); }

// −(1−ε)·log σ(βδ) − ε·log σ(−βδ) and its derivative w.r.t. δ.
PREFOPT_HOST_DEVICE inline double SmoothedLogistic(double beta, double eps,
                                                   double delta, double* d) {
  const double u = beta * delta;
  *d = beta * (-(1 - eps) * Sigmoid(-u) + eps * Sigmoid(u));
  return (1 - eps) * Softplus(-u) + eps * Softplus(u);
}

// One pair's loss and ∂loss/∂L of its chosen and rejected responses.
struct PairTerms {
  double loss = 0;
  double dchosen = 0;
  double drejected = 0;
};

// Adds loss type `type` with weight `w` for one pair with log-ratios
// r_w = ratio_chosen, r_l = ratio_rejected (reverse KL: the score is the
// ratio) and response lengths `chosen_tokens`, `rejected_tokens`.
PREFOPT_HOST_DEVICE inline void AddPairLoss(
    const ObjectiveParams& p, PairLoss type, double w, double ratio_chosen,
    double ratio_rejected, int chosen_tokens, int rejected_tokens,
    PairTerms* out) {
  const double b = p.beta, eps = p.label_smoothing;
  const double rw = ratio_chosen, rl = ratio_rejected;
  switch (type) {
    case PairLoss::kSigmoid:
    case PairLoss::kSigmoidNorm:
    case PairLoss::kHinge:
    case PairLoss::kIpo:
    case PairLoss::kRobust:
    case PairLoss::kExoPair:
    case PairLoss::kDiscopop: {
      const bool averaged =
          type == PairLoss::kIpo || type == PairLoss::kSigmoidNorm;
      const double nw = averaged ? (chosen_tokens > 1 ? chosen_tokens : 1) : 1;
      const double nl =
          averaged ? (rejected_tokens > 1 ? rejected_tokens : 1) : 1;
      const double delta = rw / nw - rl / nl;
      const double u = b * delta;
      double loss = 0, d = 0;
      switch (type) {
        case PairLoss::kSigmoid:
          loss = SmoothedLogistic(b, eps, delta, &d);
          break;
        case PairLoss::kSigmoidNorm:
          loss = SmoothedLogistic(b, 0.0, delta, &d);
          break;
        case PairLoss::kHinge:
          loss = fmax(0.0, 1.0 - u);
          d = u < 1.0 ? -b : 0.0;
          break;
        case PairLoss::kIpo: {
          const double e = delta - 1.0 / (2.0 * b);
          loss = e * e;
          d = 2.0 * e;
          break;
        }
        case PairLoss::kRobust:
          loss = ((1 - eps) * Softplus(-u) - eps * Softplus(u)) / (1 - 2 * eps);
          d = b * (-(1 - eps) * Sigmoid(-u) - eps * Sigmoid(u)) / (1 - 2 * eps);
          break;
        case PairLoss::kExoPair: {
          const double qw = Sigmoid(u), ql = Sigmoid(-u);
          const double log_pw = log1p(-eps), log_pl = log(eps);
          loss = qw * (LogSigmoid(u) - log_pw) + ql * (LogSigmoid(-u) - log_pl);
          d = b * qw * ql * (u - log_pw + log_pl);
          break;
        }
        case PairLoss::kDiscopop: {
          const double tau = p.discopop_tau;
          const double m = Sigmoid(u / tau);
          const double dm = m * Sigmoid(-u / tau) / tau;
          const double logistic = Softplus(-u), expo = exp(-u);
          loss = logistic * (1 - m) + expo * m;
          d = b *
              (-Sigmoid(-u) * (1 - m) - logistic * dm - expo * m + expo * dm);
          break;
        }
        default:
          break;
      }
      out->loss += w * loss;
      out->dchosen += w * d / nw;
      out->drejected -= w * d / nl;
      return;
    }
    default:
      break;
  }
  const double zw = b * rw, zl = b * rl;
  double loss = 0, dw = 0, dl = 0;
  switch (type) {
    case PairLoss::kNcaPair:
      loss = Softplus(-zw) + 0.5 * Softplus(zw) + 0.5 * Softplus(zl);
      dw = b * (-Sigmoid(-zw) + 0.5 * Sigmoid(zw));
      dl = b * 0.5 * Sigmoid(zl);
      break;
    case PairLoss::kBcoPair:
      loss = Softplus(-zw) + Softplus(zl);
      dw = -b * Sigmoid(-zw);
      dl = b * Sigmoid(zl);
      break;
    case PairLoss::kSppoHard: {
      const double ew = rw - 0.5 / b, el = rl + 0.5 / b;
      loss = ew * ew + el * el;
      dw = 2 * ew;
      dl = 2 * el;
      break;
    }
    case PairLoss::kApoZero:
      loss = 1 - Sigmoid(zw) + Sigmoid(zl);
      dw = -b * Sigmoid(zw) * Sigmoid(-zw);
      dl = b * Sigmoid(zl) * Sigmoid(-zl);
      break;
    case PairLoss::kApoDown: {
      const double zm = b * (rw - rl);
      const double sm = b * Sigmoid(zm) * Sigmoid(-zm);
      loss = Sigmoid(zw) + 1 - Sigmoid(zm);
      dw = b * Sigmoid(zw) * Sigmoid(-zw) - sm;
      dl = sm;
      break;
    }
    default:
      break;
  }
  out->loss += w * loss;
  out->dchosen += w * dw;
  out->drejected += w * dl;
}

// Implicit-reward SFT's KL exponent −r is clamped to at most this (r ≥ −20),
// as trainer/objectives/implicit_sft.h's kKlMaxExponent.
inline constexpr double kKlMaxExponent = 20.0;

// φ and φ′ of an implicit-reward SFT divergence at r clamped into its domain
// (trainer/objectives/implicit_sft.cc's EvaluatePhi); *clamped says whether r
// moved.
PREFOPT_HOST_DEVICE inline void EvaluatePhi(ImplicitDivergence divergence,
                                            double r, double domain_margin,
                                            double* phi, double* dphi,
                                            bool* clamped) {
  double r_min = -HUGE_VAL;
  switch (divergence) {
    case ImplicitDivergence::kNeymanChi2:
    case ImplicitDivergence::kSquaredHellinger:
      r_min = -1.0 + domain_margin;
      break;
    case ImplicitDivergence::kJensenShannon:
      r_min = -log(2.0) + domain_margin;
      break;
    case ImplicitDivergence::kKl:
      r_min = -kKlMaxExponent;
      break;
    default:
      break;
  }
  *clamped = false;
  if (r < r_min) {
    r = r_min;
    *clamped = true;
  }
  switch (divergence) {
    case ImplicitDivergence::kTotalVariation:
      *phi = r;
      *dphi = 1.0;
      break;
    case ImplicitDivergence::kPearsonChi2:
      *phi = r - 0.25 * r * r;
      *dphi = 1.0 - 0.5 * r;
      break;
    case ImplicitDivergence::kNeymanChi2: {
      const double s = sqrt(1.0 + r);
      *phi = 2.0 * s - 2.0;
      *dphi = 1.0 / s;
      break;
    }
    case ImplicitDivergence::kKl: {
      const double e = exp(-r);
      *phi = -e;
      *dphi = e;
      break;
    }
    case ImplicitDivergence::kSquaredHellinger: {
      const double u = 1.0 + r;
      *phi = r / u;
      *dphi = 1.0 / (u * u);
      break;
    }
    case ImplicitDivergence::kJensenShannon:
      *phi = log1p(-expm1(-r));
      *dphi = 1.0 / (2.0 * exp(r) - 1.0);
      break;
  }
}

// Per-sequence sums of pass 1's per-row values.
struct SequenceSums {
  double logp = 0;
  double logit_sum = 0;
  double correct = 0;
  double entropy = 0;
};

// One unit's metric values (ObjectiveMetric order) and the coefficients G of
// its sequences' rows: a pair (units of kPreference: sequences 2i and 2i+1)
// or one sequence (kTokenMean, kImplicitSequence). `ref` holds the reference's
// L̃ of the unit's sequences, `tokens` their row counts.
PREFOPT_HOST_DEVICE inline void UnitCoefficients(
    const ObjectiveParams& p, const SequenceSums* seq, const double* ref,
    const int* tokens, double metrics[kObjectiveMetricCount], float coef[2]) {
  for (int k = 0; k < kObjectiveMetricCount; ++k) metrics[k] = 0;
  if (p.kind == ObjectiveKind::kTokenMean) {
    metrics[kMetricLoss] = -seq[0].logp;
    metrics[kMetricMeanTokenAccuracy] = seq[0].correct;
    metrics[kMetricEntropy] = seq[0].entropy;
    coef[0] = static_cast<float>(1.0 / p.denominator);
    coef[1] = 0;
    return;
  }
  if (p.kind == ObjectiveKind::kImplicitSequence) {
    double phi = 0, dphi = 0;
    bool clamped = false;
    EvaluatePhi(p.divergence, p.beta * (seq[0].logp - ref[0]), p.domain_margin,
                &phi, &dphi, &clamped);
    const double w = p.beta * dphi;
    metrics[kMetricLoss] = -phi;
    metrics[kMetricIsftWeight] = w;
    metrics[kMetricIsftReward] = p.beta * (seq[0].logp - ref[0]);
    metrics[kMetricIsftClamped] = clamped ? 1.0 : 0.0;
    metrics[kMetricLogpsPolicy] = seq[0].logp;
    metrics[kMetricLogpsReference] = ref[0];
    metrics[kMetricSftLoss] = -seq[0].logp;
    metrics[kMetricMeanTokenAccuracy] = seq[0].correct;
    metrics[kMetricEntropy] = seq[0].entropy;
    coef[0] = static_cast<float>(w * (1.0 / p.denominator));
    coef[1] = 0;
    return;
  }
  const SequenceSums& sw = seq[0];
  const SequenceSums& sl = seq[1];
  const double ratio_chosen = sw.logp - ref[0];
  const double ratio_rejected = sl.logp - ref[1];
  PairTerms t;
  for (int k = 0; k < p.num_terms; ++k) {
    AddPairLoss(p, p.loss[k], p.weight[k], ratio_chosen, ratio_rejected,
                tokens[0], tokens[1], &t);
  }
  double sft_per_token = 0;
  if (p.sft_weight != 0) {
    t.loss += p.sft_weight * -sw.logp * p.pairs_per_token;
    sft_per_token = -p.sft_weight * p.pairs_per_token;
  }
  coef[0] = static_cast<float>(-(t.dchosen + sft_per_token) / p.denominator);
  coef[1] = static_cast<float>(-t.drejected / p.denominator);
  const double reward_w = p.beta * ratio_chosen;
  const double reward_l = p.beta * ratio_rejected;
  metrics[kMetricLoss] = t.loss;
  metrics[kMetricRewardsChosen] = reward_w;
  metrics[kMetricRewardsRejected] = reward_l;
  metrics[kMetricRewardsMargins] = reward_w - reward_l;
  metrics[kMetricRewardsAccuracies] = reward_w > reward_l ? 1.0 : 0.0;
  metrics[kMetricLogpsChosen] = sw.logp;
  metrics[kMetricLogpsRejected] = sl.logp;
  metrics[kMetricLogitsChosen] = sw.logit_sum;
  metrics[kMetricLogitsRejected] = sl.logit_sum;
  metrics[kMetricMeanTokenAccuracy] = sw.correct;
  metrics[kMetricRankingAccuracy] = sw.logp >= sl.logp ? 1.0 : 0.0;
  metrics[kMetricRankingAccuracyLenNorm] =
      sw.logp / tokens[0] >= sl.logp / tokens[1] ? 1.0 : 0.0;
  metrics[kMetricEntropy] = sw.entropy + sl.entropy;
}

// Backend::ObjectiveCoefficients over host memory (the CPU backends'): each
// sequence's sums in row order, then each unit in turn.
inline void HostObjectiveCoefficients(
    float* coef, double* metrics, const float* logp, const float* logit_sum,
    const int32_t* correct, const float* entropy, const SeqSpan* spans,
    const double* reference, int num_seqs, const ObjectiveParams& params) {
  const int per_unit = params.kind == ObjectiveKind::kPreference ? 2 : 1;
  for (int u = 0; u + per_unit <= num_seqs; u += per_unit) {
    SequenceSums seq[2];
    int tokens[2] = {0, 0};
    for (int j = 0; j < per_unit; ++j) {
      const SeqSpan& span = spans[u + j];
      tokens[j] = span.len;
      for (int r = span.start; r < span.start + span.len; ++r) {
        seq[j].logp += logp[r];
        seq[j].logit_sum += logit_sum[r];
        seq[j].correct += correct[r];
        seq[j].entropy += entropy[r];
      }
    }
    double values[kObjectiveMetricCount];
    float unit_coef[2];
    UnitCoefficients(params, seq,
                     reference != nullptr ? reference + u : nullptr, tokens,
                     values, unit_coef);
    for (int k = 0; k < kObjectiveMetricCount; ++k) metrics[k] += values[k];
    for (int j = 0; j < per_unit; ++j) {
      const SeqSpan& span = spans[u + j];
      for (int r = span.start; r < span.start + span.len; ++r) {
        coef[r] = unit_coef[j];
      }
    }
  }
}

}  // namespace prefopt::kernels::objective_math

#endif  // PREFOPT_KERNELS_OBJECTIVE_MATH_H_
