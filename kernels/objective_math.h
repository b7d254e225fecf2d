// The objectives' per-row and per-sequence math as the device computes it
// (Backend::ObjectiveCoefficients, docs/objectives.md §7): DPO's per-pair
// losses and their derivatives w.r.t. the pair's policy log-probs with f-DPO's
// scores, LD-DPO's token weights and WPO's pair weights (§1), SFT's token mean
// (§5), implicit-reward SFT at both granularities (§3), PRIOR's token
// weights (§4), the reference-free CPO (SimPO, AlphaPO) and ORPO (§8) and
// KTO (§9), in double precision, written once for the host and the device.
// The host objectives (trainer/objectives/dpo.cc, sft.cc, implicit_sft.cc,
// prior.cc, cpo.cc, orpo.cc, kto.cc) are the reference these are tested
// against; the formulas they share (the pair losses, f-DPO's score, φ,
// PRIOR's weight, CPO's, ORPO's and KTO's terms) are these functions, and the
// rest follows their operations one for one, so both give the same doubles from
// the same values, up to summation order.
#ifndef PREFOPT_KERNELS_OBJECTIVE_MATH_H_
#define PREFOPT_KERNELS_OBJECTIVE_MATH_H_

#include <math.h>

#include <vector>

#include "kernels/backend.h"

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

// The losses of a margin δ that DPO (on its log-ratios) and CPO (on its
// rewards) share, and their derivative w.r.t. δ: kSigmoid with label
// smoothing ε, kHinge and kIpo (TRL ignores ε for these two).
PREFOPT_HOST_DEVICE inline double MarginLoss(PairLoss type, double beta,
                                             double eps, double delta,
                                             double* d) {
  const double u = beta * delta;
  switch (type) {
    case PairLoss::kHinge:
      *d = u < 1.0 ? -beta : 0.0;
      return fmax(0.0, 1.0 - u);
    case PairLoss::kIpo: {
      const double e = delta - 1.0 / (2.0 * beta);
      *d = 2.0 * e;
      return e * e;
    }
    default:
      return SmoothedLogistic(beta, eps, delta, d);
  }
}

// log(1 − e^x) for x < 0, without cancellation (TRL's log1mexp: log1p(−e^x)
// below −ln 2, log(−expm1(x)) above).
PREFOPT_HOST_DEVICE inline double Log1mExp(double x) {
  constexpr double kMinusLn2 = -0.6931471805599453;
  return x < kMinusLn2 ? log1p(-exp(x)) : log(-expm1(x));
}

// The preference term of one pair of a reference-free objective (CPO or
// ORPO, docs/objectives.md §8), without the NLL term: its loss, ∂loss/∂ℓ_t
// of every token of the chosen and of the rejected response (constant over a
// response), the log-probs the loss compares (length-averaged or sums) and
// the rewards TRL logs; ORPO's log-odds too.
struct ReferenceFreePair {
  double loss = 0;
  double dchosen = 0;
  double drejected = 0;
  double logp_chosen = 0;
  double logp_rejected = 0;
  double reward_chosen = 0;
  double reward_rejected = 0;
  double log_odds_ratio = 0;  // ORPO: log σ(log-odds ratio)
  double log_odds = 0;        // ORPO: the log-odds ratio
};

// CPO's term (kCpo) of a pair whose responses have log-prob sums
// `logp_chosen`, `logp_rejected` over `chosen_tokens`, `rejected_tokens`
// tokens: IPO and SimPO compare length-averaged log-probs, the others sums
// (TRL's average_log_prob), each through AlphaPO's reward shape when
// reward_alpha ≠ 0.
PREFOPT_HOST_DEVICE inline ReferenceFreePair CpoPair(const ObjectiveParams& p,
                                                     double logp_chosen,
                                                     double logp_rejected,
                                                     double chosen_tokens,
                                                     double rejected_tokens) {
  const double beta = p.beta, alpha = p.reward_alpha;
  const bool averaged =
      p.cpo_loss == CpoLoss::kIpo || p.cpo_loss == CpoLoss::kSimpo;
  const double nw = averaged ? chosen_tokens : 1.0;
  const double nl = averaged ? rejected_tokens : 1.0;
  const double xw = logp_chosen / nw, xl = logp_rejected / nl;
  // AlphaPO's reward r(x) = (1 − e^(−αx))/α, r'(x) = e^(−αx); α = 0 is r = x.
  double rw = xw, rl = xl, drw = 1, drl = 1;
  if (alpha != 0) {
    rw = -expm1(-alpha * xw) / alpha;
    rl = -expm1(-alpha * xl) / alpha;
    drw = exp(-alpha * xw);
    drl = exp(-alpha * xl);
  }
  double h = rw - rl;
  if (p.cpo_loss == CpoLoss::kSimpo) h -= p.simpo_gamma / beta;
  const PairLoss margin_loss = p.cpo_loss == CpoLoss::kHinge ? PairLoss::kHinge
                               : p.cpo_loss == CpoLoss::kIpo
                                   ? PairLoss::kIpo
                                   : PairLoss::kSigmoid;
  double dloss_dh = 0;
  const double loss =
      MarginLoss(margin_loss, beta, p.label_smoothing, h, &dloss_dh);
  ReferenceFreePair out;
  out.loss = loss;
  out.dchosen = dloss_dh * drw / nw;
  out.drejected = -dloss_dh * drl / nl;
  out.logp_chosen = xw;
  out.logp_rejected = xl;
  out.reward_chosen = beta * rw;
  out.reward_rejected = beta * rl;
  return out;
}

// ORPO's odds-ratio term (kOrpo) β·softplus(−log-odds ratio) of a pair, on
// the responses' length-averaged log-probs x: log-odds(x) = x − log(1 − e^x),
// d/dx log-odds = 1/(1 − e^x) = −1/expm1(x).
PREFOPT_HOST_DEVICE inline ReferenceFreePair OrpoPair(const ObjectiveParams& p,
                                                      double logp_chosen,
                                                      double logp_rejected,
                                                      double chosen_tokens,
                                                      double rejected_tokens) {
  const double beta = p.beta;
  const double xw = logp_chosen / chosen_tokens;
  const double xl = logp_rejected / rejected_tokens;
  const double log_odds = (xw - xl) - (Log1mExp(xw) - Log1mExp(xl));
  const double ratio = -Softplus(-log_odds);  // log σ(log_odds)
  const double dloss_dodds = -beta * Sigmoid(-log_odds);
  ReferenceFreePair out;
  out.loss = -beta * ratio;
  out.dchosen = dloss_dodds * (-1.0 / expm1(xw)) / chosen_tokens;
  out.drejected = -dloss_dodds * (-1.0 / expm1(xl)) / rejected_tokens;
  out.logp_chosen = xw;
  out.logp_rejected = xl;
  out.reward_chosen = beta * xw;
  out.reward_rejected = beta * xl;
  out.log_odds_ratio = ratio;
  out.log_odds = log_odds;
  return out;
}

// KTO's loss of one example (kKto, docs/objectives.md §9) whose completion
// has the log-ratio L − L̃ = `logratio`, and ∂loss/∂L (z₀ = p.kto_kl is a
// constant). KTO: desirable 1 − σ(β(r − z₀)), undesirable 1 − σ(β(z₀ − r));
// APO_ZERO_UNPAIRED: desirable 1 − σ(βr), undesirable σ(βr). With
// x = β(r − z₀) (z₀ = 0 for APO) these are σ(−x) and σ(x), whose derivatives
// in r are ∓β·σ(x)·σ(−x); each times its side's weight.
PREFOPT_HOST_DEVICE inline double KtoLoss(const ObjectiveParams& p,
                                          bool desirable, double logratio,
                                          double* dloss) {
  const double x = p.beta * (p.kto_apo ? logratio : logratio - p.kto_kl);
  const double slope = p.beta * Sigmoid(x) * Sigmoid(-x);
  const double weight = desirable ? p.desirable_weight : p.undesirable_weight;
  if (desirable) {
    *dloss = -weight * slope;
    return weight * Sigmoid(-x);
  }
  // KTO's 1 − σ(β(z₀ − r)) is σ(x), as APO's σ(βr) is.
  *dloss = weight * slope;
  return weight * Sigmoid(x);
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
        case PairLoss::kHinge:
        case PairLoss::kIpo:
          loss = MarginLoss(type, b, eps, delta, &d);
          break;
        case PairLoss::kSigmoidNorm:
          loss = MarginLoss(PairLoss::kSigmoid, b, 0.0, delta, &d);
          break;
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
// which bounds its loss and weight by e^20 ≈ 4.9e8.
inline constexpr double kKlMaxExponent = 20.0;

// φ and φ′ of an implicit-reward SFT divergence at r clamped into its domain
// (docs/objectives.md §3; trainer/objectives/implicit_sft.h's EvaluatePhi);
// *clamped says whether r moved.
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
      // The convex conjugate's exp(−(r+1)) scaled by e: the minimizer is the
      // same, and the weight at π = π_ref is β, as for the other divergences.
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
      // 2 − e^{−r} = 1 − expm1(−r): no cancellation for small |r|.
      *phi = log1p(-expm1(-r));
      // e^{−r} / (2 − e^{−r}) = 1 / (2e^r − 1).
      *dphi = 1.0 / (2.0 * exp(r) - 1.0);
      break;
  }
}

// Whether a pair loss is one of AOT's, sorted across the micro-batch.
PREFOPT_HOST_DEVICE inline bool IsSorted(PairLoss type) {
  return type == PairLoss::kAot || type == PairLoss::kAotUnpaired;
}

PREFOPT_HOST_DEVICE inline bool HasSortedTerms(const ObjectiveParams& p) {
  for (int k = 0; k < p.num_terms; ++k) {
    if (IsSorted(p.loss[k])) return true;
  }
  return false;
}

// Position of v[i] in the stable ascending sort of v[0..n) (ties keep their
// order, as std::stable_sort).
PREFOPT_HOST_DEVICE inline int StableRank(const double* v, int n, int i) {
  int rank = 0;
  for (int k = 0; k < n; ++k) rank += v[k] < v[i] || (v[k] == v[i] && k < i);
  return rank;
}

// LD-DPO's weight a_t of a pair's response token t: 1 within the shorter
// response's length `shared`, α_ld after it; 1 without LD-DPO (ld_alpha < 0).
PREFOPT_HOST_DEVICE inline double LdTokenWeight(double ld_alpha, int t,
                                                int shared) {
  return ld_alpha >= 0 && t >= shared ? ld_alpha : 1.0;
}

// f-DPO's score f(r) of a log-ratio r and ds/dr (docs/objectives.md §1, TRL's
// f'(exp(r))).
PREFOPT_HOST_DEVICE inline double Score(ScoreDivergence divergence,
                                        double alpha, double r,
                                        double* dscore) {
  switch (divergence) {
    case ScoreDivergence::kForwardKl:
      // f'(t) = 1 − 1/t.
      *dscore = exp(-r);
      return 1 - exp(-r);
    case ScoreDivergence::kJsDivergence:
      // f'(t) = log(2t/(t+1)) = log 2 + log σ(log t).
      *dscore = Sigmoid(-r);
      return log(2.0) + LogSigmoid(r);
    case ScoreDivergence::kAlphaDivergence: {
      // f'(t) = (t^(α−1) − 1)/(α−1); TRL falls back to reverse KL at α ≈ 1
      // and clamps the exponent at 80 (no gradient beyond).
      const double a = alpha - 1.0;
      if (fabs(a) < 1e-6) break;
      const double t = a * r;
      const double e = exp(fmin(t, 80.0));
      *dscore = t <= 80.0 ? e : 0.0;
      return (e - 1.0) / a;
    }
    default:
      break;
  }
  *dscore = 1;
  return r;
}

// Whether a pair loss reads the (f-DPO) score difference rather than the raw
// log-ratios.
PREFOPT_HOST_DEVICE inline bool OnScoreDifference(PairLoss type) {
  return type == PairLoss::kSigmoid || type == PairLoss::kSigmoidNorm ||
         type == PairLoss::kHinge || type == PairLoss::kIpo ||
         type == PairLoss::kRobust || type == PairLoss::kExoPair ||
         type == PairLoss::kDiscopop;
}

// PRIOR's unnormalized weight w_t = (1 − p̃_t)^α of a token with reference
// log-prob ℓ̃_t, 1 − p̃_t computed as −expm1(ℓ̃_t); pow(x, 0) is 1 for every x,
// 0 included, so α = 0 is exactly SFT.
PREFOPT_HOST_DEVICE inline double PriorTokenWeight(float ref_logp,
                                                   double alpha) {
  return pow(-expm1(static_cast<double>(ref_logp)), alpha);
}

// Per-sequence sums of pass 1's per-row values and of the objective's
// per-row terms (AddRow). max_weight is a maximum, the rest are sums.
struct SequenceSums {
  double logp = 0;
  double logit_sum = 0;
  double correct = 0;
  double entropy = 0;
  double ld_logp = 0;   // Σ a_t·ℓ_t (LD-DPO's L)
  double wpo = 0;       // Σ (ℓ_t − log Σ p²) (WPO)
  double ref_logp = 0;  // Σ ℓ̃_t (token-reference kinds)
  double phi = 0;       // Σ φ(r_t) (kImplicitToken)
  double weight = 0;    // Σ β·φ′(r_t) (kImplicitToken); Σ w_t (kPrior)
  double clamped = 0;   // tokens whose r_t was clamped (kImplicitToken)
  double weighted_logp = 0;  // Σ w_t·ℓ_t (kPrior)
  double weight_log = 0;     // Σ w_t·ln w_t over w_t > 0 (kPrior)
  double max_weight = 0;     // max_t w_t (kPrior)
};
inline constexpr int kSequenceSumValues = 13;
static_assert(sizeof(SequenceSums) == kSequenceSumValues * sizeof(double));

// Adds row t of a sequence to its sums: its pass-1 values, the reference's
// ℓ̃ of its token (token-reference kinds; else unread) and its log Σ p²
// (use_weighting; else unread). `shared` is the pair's shorter response
// length (kPreference).
PREFOPT_HOST_DEVICE inline void AddRow(const ObjectiveParams& p, int t,
                                       int shared, float logp, float logit_sum,
                                       int32_t correct, float entropy,
                                       float ref_logp, float log_sum_sq,
                                       SequenceSums* s) {
  s->logp += logp;
  s->logit_sum += logit_sum;
  s->correct += correct;
  s->entropy += entropy;
  switch (p.kind) {
    case ObjectiveKind::kPreference:
      if (p.ld_alpha >= 0)
        s->ld_logp += LdTokenWeight(p.ld_alpha, t, shared) * logp;
      if (p.use_weighting) s->wpo += logp - log_sum_sq;
      break;
    case ObjectiveKind::kImplicitToken: {
      double phi = 0, dphi = 0;
      bool clamped = false;
      s->ref_logp += ref_logp;
      EvaluatePhi(p.divergence, p.beta * (static_cast<double>(logp) - ref_logp),
                  p.domain_margin, &phi, &dphi, &clamped);
      s->phi += phi;
      s->weight += p.beta * dphi;
      s->clamped += clamped ? 1.0 : 0.0;
      break;
    }
    case ObjectiveKind::kPrior: {
      const double w = PriorTokenWeight(ref_logp, p.prior_alpha);
      s->weight += w;
      s->weighted_logp += w * logp;
      if (w > 0) s->weight_log += w * log(w);
      s->max_weight = fmax(s->max_weight, w);
      break;
    }
    default:
      break;
  }
}

// The values a sorted loss sorts, of one pair with sums `seq` and reference
// `ref` (docs/objectives.md §1): AOT's x = L_w − L_l and y = L̃_w − L̃_l,
// AOT_UNPAIRED's x = r_w and y = r_l.
PREFOPT_HOST_DEVICE inline void SortedLossInputs(const ObjectiveParams& p,
                                                 PairLoss type,
                                                 const SequenceSums* seq,
                                                 const double* ref, double* x,
                                                 double* y) {
  const bool ld = p.ld_alpha >= 0;
  const double lw = ld ? seq[0].ld_logp : seq[0].logp;
  const double ll = ld ? seq[1].ld_logp : seq[1].logp;
  if (type == PairLoss::kAot) {
    *x = lw - ll;
    *y = ref[0] - ref[1];
  } else {
    *x = lw - ref[0];
    *y = ll - ref[1];
  }
}

// The j-th loss of sorted loss `type` with weight w over a micro-batch's
// pairs, whose sorted values x and y are sorted by the permutations px and py
// (x[px[j]] is the j-th smallest): g(x_(j) − y_(j)) goes to pair j's loss,
// its derivative to the chosen response of pair px[j] and, negated, to the
// rejected response of pair px[j] (AOT: y is the reference's) or py[j]
// (AOT_UNPAIRED). Each j writes distinct entries of `sorted`.
PREFOPT_HOST_DEVICE inline void AddSortedLoss(const ObjectiveParams& p,
                                              PairLoss type, double w,
                                              const double* x, const double* y,
                                              const int* px, const int* py,
                                              int j, PairTerms* sorted) {
  double d = 0;
  const double loss =
      SmoothedLogistic(p.beta, p.label_smoothing, x[px[j]] - y[py[j]], &d) * w;
  sorted[j].loss += loss;
  sorted[px[j]].dchosen += w * d;
  sorted[type == PairLoss::kAot ? px[j] : py[j]].drejected -= w * d;
}

// What a sequence's rows need to write their coefficients (RowCoefficient):
// kPreference: G_t = −(scale·a_t + offset)/denominator, a_t LD-DPO's weight
// within `shared`; kCpo, kOrpo, kKto: G_t = −(scale/denominator + offset);
// kPrior: ŵ_t = w_t·scale; kTokenMean, kImplicitSequence: G_t = scale;
// kImplicitToken: nothing (G_t depends on the row alone).
struct RowScale {
  double scale = 0;
  double offset = 0;
  double shared = 0;
};
inline constexpr int kRowScaleValues = 3;
static_assert(sizeof(RowScale) == kRowScaleValues * sizeof(double));

// The metrics every pair objective reports for a pair whose responses have
// sums `sw`, `sl` over `tokens[0]`, `tokens[1]` rows: its rewards, the
// log-probs its loss compares, the logits sums, the ranking accuracies
// (docs/objectives.md §1) and the responses' entropy.
PREFOPT_HOST_DEVICE inline void PairMetrics(
    const SequenceSums& sw, const SequenceSums& sl, const int* tokens,
    double reward_chosen, double reward_rejected, double logp_chosen,
    double logp_rejected, double metrics[kObjectiveMetricCount]) {
  metrics[kMetricRewardsChosen] = reward_chosen;
  metrics[kMetricRewardsRejected] = reward_rejected;
  metrics[kMetricRewardsMargins] = reward_chosen - reward_rejected;
  metrics[kMetricRewardsAccuracies] =
      reward_chosen > reward_rejected ? 1.0 : 0.0;
  metrics[kMetricLogpsChosen] = logp_chosen;
  metrics[kMetricLogpsRejected] = logp_rejected;
  metrics[kMetricLogitsChosen] = sw.logit_sum;
  metrics[kMetricLogitsRejected] = sl.logit_sum;
  metrics[kMetricRankingAccuracy] = sw.logp >= sl.logp ? 1.0 : 0.0;
  metrics[kMetricRankingAccuracyLenNorm] =
      sw.logp / tokens[0] >= sl.logp / tokens[1] ? 1.0 : 0.0;
  metrics[kMetricEntropy] = sw.entropy + sl.entropy;
}

// The metrics and row scales of a reference-free unit (kCpo: a pair; kOrpo:
// a pair and its chosen prompt), as CpoObjective::Coefficients and
// OrpoObjective::Coefficients compute them: the pair's term plus the NLL
// term, a mean over the global batch's token_denominator tokens whose share
// of the "loss" metric is scaled to the pair count.
PREFOPT_HOST_DEVICE inline void ReferenceFreeUnit(
    const ObjectiveParams& p, const SequenceSums* seq, const int* tokens,
    double metrics[kObjectiveMetricCount], RowScale rows[]) {
  const SequenceSums& sw = seq[0];
  const SequenceSums& sl = seq[1];
  const bool orpo = p.kind == ObjectiveKind::kOrpo;
  const ReferenceFreePair pair =
      orpo ? OrpoPair(p, sw.logp, sl.logp, tokens[0], tokens[1])
           : CpoPair(p, sw.logp, sl.logp, tokens[0], tokens[1]);
  const double tokens_all = p.token_denominator;
  // TRL skips CPO's NLL when cpo_alpha is 0 and logs nll_loss 0; ORPO's
  // covers the chosen prompt's rows too, with weight 1.
  const bool with_nll = orpo || p.nll_weight != 0;
  const double nll = orpo ? -(sw.logp + seq[2].logp) : -sw.logp;
  double loss = pair.loss;
  if (orpo) {
    loss += nll * p.denominator / tokens_all;
    rows[0].offset = -(1.0 / tokens_all);
    rows[2].offset = -(1.0 / tokens_all);
    metrics[kMetricLogOddsRatio] = pair.log_odds_ratio;
    metrics[kMetricLogOddsChosen] = pair.log_odds;
  } else {
    loss += with_nll ? p.nll_weight * nll * p.denominator / tokens_all : 0;
    rows[0].offset = with_nll ? -p.nll_weight / tokens_all : 0.0;
  }
  rows[0].scale = pair.dchosen;
  rows[1].scale = pair.drejected;
  metrics[kMetricLoss] = loss;
  metrics[kMetricNllLoss] = with_nll ? nll : 0.0;
  // TRL's entropy is over the response tokens only, as PairMetrics'.
  PairMetrics(sw, sl, tokens, pair.reward_chosen, pair.reward_rejected,
              pair.logp_chosen, pair.logp_rejected, metrics);
}

// One unit's metric values (ObjectiveMetric order) and what its sequences'
// rows need for their coefficients: SequencesPerUnit(p) sequences, a pair
// (kPreference, kCpo: sequences 2i and 2i+1), a pair and its chosen prompt
// (kOrpo) or one sequence (the other kinds). `ref` holds the unit's
// ReferenceValuesPerSequence(p) values per sequence (the reference's L̃,
// LD-weighted with ld_alpha, and KTO's label), `tokens` their row counts,
// `sorted` the pair's share of the sorted losses (AddSortedLoss; null
// without them).
PREFOPT_HOST_DEVICE inline void UnitCoefficients(
    const ObjectiveParams& p, const SequenceSums* seq, const double* ref,
    const int* tokens, const PairTerms* sorted,
    double metrics[kObjectiveMetricCount],
    RowScale rows[kMaxSequencesPerUnit]) {
  for (int k = 0; k < kObjectiveMetricCount; ++k) metrics[k] = 0;
  for (int j = 0; j < kMaxSequencesPerUnit; ++j) rows[j] = RowScale();
  const SequenceSums& s0 = seq[0];
  switch (p.kind) {
    case ObjectiveKind::kCpo:
    case ObjectiveKind::kOrpo:
      ReferenceFreeUnit(p, seq, tokens, metrics, rows);
      return;
    case ObjectiveKind::kKtoKl:
      metrics[kMetricKl] = s0.logp - ref[0];
      return;
    case ObjectiveKind::kKto: {
      // As KtoObjective::Coefficients: the example's side (chosen:
      // desirable) gets its rewards/, logps/ and logits/ values.
      const bool desirable = ref[1] != 0;
      const double logratio = s0.logp - ref[0];
      double dloss = 0;
      metrics[kMetricLoss] = KtoLoss(p, desirable, logratio, &dloss);
      metrics[kMetricKl] = p.kto_kl;
      metrics[desirable ? kMetricRewardsChosen : kMetricRewardsRejected] =
          p.beta * logratio;
      metrics[desirable ? kMetricLogpsChosen : kMetricLogpsRejected] = s0.logp;
      metrics[desirable ? kMetricLogitsChosen : kMetricLogitsRejected] =
          s0.logit_sum;
      metrics[kMetricEntropy] = s0.entropy;
      rows[0].scale = dloss;
      return;
    }
    case ObjectiveKind::kTokenMean:
      metrics[kMetricLoss] = -s0.logp;
      metrics[kMetricMeanTokenAccuracy] = s0.correct;
      metrics[kMetricEntropy] = s0.entropy;
      rows[0].scale = 1.0 / p.denominator;
      return;
    case ObjectiveKind::kImplicitSequence:
    case ObjectiveKind::kImplicitToken: {
      const bool token = p.kind == ObjectiveKind::kImplicitToken;
      const double ref_sum = token ? s0.ref_logp : ref[0];
      double phi = 0, dphi = 0;
      bool clamped = false;
      if (token) {
        metrics[kMetricLoss] = -s0.phi;
        metrics[kMetricIsftWeight] = s0.weight;
        clamped = s0.clamped > 0;
      } else {
        EvaluatePhi(p.divergence, p.beta * (s0.logp - ref_sum), p.domain_margin,
                    &phi, &dphi, &clamped);
        const double w = p.beta * dphi;
        metrics[kMetricLoss] = -phi;
        metrics[kMetricIsftWeight] = w;
        rows[0].scale = w * (1.0 / p.denominator);
      }
      metrics[kMetricIsftReward] = p.beta * (s0.logp - ref_sum);
      metrics[kMetricIsftClamped] = clamped ? 1.0 : 0.0;
      metrics[kMetricLogpsPolicy] = s0.logp;
      metrics[kMetricLogpsReference] = ref_sum;
      metrics[kMetricSftLoss] = -s0.logp;
      metrics[kMetricMeanTokenAccuracy] = s0.correct;
      metrics[kMetricEntropy] = s0.entropy;
      return;
    }
    case ObjectiveKind::kPrior: {
      metrics[kMetricEntropy] = s0.entropy;
      // A sequence without tokens adds nothing (PriorObjective::Sequence).
      if (tokens[0] == 0) return;
      const double floor_sum = fmax(s0.weight, p.weight_sum_floor);
      const double scale = tokens[0] / floor_sum;
      // With S the floored sum, ŵ_t/k = w_t/S, so
      // H = −Σ_t (w_t/S)·ln(w_t/S) = (Σ_t w_t)/S·ln S − (Σ_t w_t ln w_t)/S.
      const double entropy =
          s0.weight / floor_sum * log(floor_sum) - s0.weight_log / floor_sum;
      metrics[kMetricLoss] = -scale * s0.weighted_logp;
      metrics[kMetricPriorLoss] = metrics[kMetricLoss];
      metrics[kMetricSftLoss] = -s0.logp;
      metrics[kMetricMeanTokenAccuracy] = s0.correct;
      metrics[kMetricPriorWeightMax] = s0.max_weight * scale;
      metrics[kMetricPriorWeightEntropy] = entropy;
      rows[0].scale = scale;
      return;
    }
    default:
      break;
  }
  const SequenceSums& sw = seq[0];
  const SequenceSums& sl = seq[1];
  const bool ld = p.ld_alpha >= 0;
  const double logp_chosen = ld ? sw.ld_logp : sw.logp;
  const double logp_rejected = ld ? sl.ld_logp : sl.logp;
  const double ratio_chosen = logp_chosen - ref[0];
  const double ratio_rejected = logp_rejected - ref[1];
  double dscore_chosen = 1, dscore_rejected = 1;
  const double score_chosen =
      Score(p.score, p.score_alpha, ratio_chosen, &dscore_chosen);
  const double score_rejected =
      Score(p.score, p.score_alpha, ratio_rejected, &dscore_rejected);
  PairTerms t;
  if (sorted != nullptr) t = *sorted;
  for (int k = 0; k < p.num_terms; ++k) {
    if (IsSorted(p.loss[k])) continue;
    // On the score difference, chained through ∂score/∂L; on the raw
    // log-ratios otherwise (as DpoObjective::AddTerm).
    const bool on_scores = OnScoreDifference(p.loss[k]);
    PairTerms term;
    AddPairLoss(p, p.loss[k], p.weight[k],
                on_scores ? score_chosen : ratio_chosen,
                on_scores ? score_rejected : ratio_rejected, tokens[0],
                tokens[1], &term);
    t.loss += term.loss;
    t.dchosen += on_scores ? term.dchosen * dscore_chosen : term.dchosen;
    t.drejected +=
        on_scores ? term.drejected * dscore_rejected : term.drejected;
  }
  double sft_per_token = 0;
  if (p.sft_weight != 0) {
    t.loss += p.sft_weight * -sw.logp * p.pairs_per_token;
    sft_per_token = -p.sft_weight * p.pairs_per_token;
  }
  // WPO's w(y_w)·w(y_l), a constant.
  double pair_weight = 1;
  if (p.use_weighting) {
    pair_weight = exp(sw.wpo / (tokens[0] > 1 ? tokens[0] : 1)) *
                  exp(sl.wpo / (tokens[1] > 1 ? tokens[1] : 1));
  }
  const int shared = tokens[0] < tokens[1] ? tokens[0] : tokens[1];
  rows[0].scale = pair_weight * t.dchosen;
  rows[0].offset = sft_per_token;
  rows[0].shared = shared;
  rows[1].scale = pair_weight * t.drejected;
  rows[1].shared = shared;
  metrics[kMetricLoss] = pair_weight * t.loss;
  metrics[kMetricMeanTokenAccuracy] = sw.correct;
  PairMetrics(sw, sl, tokens, p.beta * ratio_chosen, p.beta * ratio_rejected,
              logp_chosen, logp_rejected, metrics);
}

// G_t of row t of a sequence with RowScale `s`, policy log-prob `logp` and
// reference log-prob `ref_logp` (read by kImplicitToken and kPrior).
PREFOPT_HOST_DEVICE inline float RowCoefficient(const ObjectiveParams& p,
                                                const RowScale& s, int t,
                                                float logp, float ref_logp) {
  switch (p.kind) {
    case ObjectiveKind::kPreference: {
      const double a = LdTokenWeight(p.ld_alpha, t, static_cast<int>(s.shared));
      return static_cast<float>(-(s.scale * a + s.offset) / p.denominator);
    }
    case ObjectiveKind::kImplicitToken: {
      double phi = 0, dphi = 0;
      bool clamped = false;
      EvaluatePhi(p.divergence, p.beta * (static_cast<double>(logp) - ref_logp),
                  p.domain_margin, &phi, &dphi, &clamped);
      return static_cast<float>(p.beta * dphi * (1.0 / p.denominator));
    }
    case ObjectiveKind::kCpo:
    case ObjectiveKind::kOrpo:
    case ObjectiveKind::kKto:
      return static_cast<float>(-(s.scale / p.denominator + s.offset));
    case ObjectiveKind::kPrior:
      return static_cast<float>(PriorTokenWeight(ref_logp, p.prior_alpha) *
                                s.scale * (1.0 / p.denominator));
    default:
      return static_cast<float>(s.scale);
  }
}

// Backend::ObjectiveCoefficients over host memory (the CPU backends'): every
// sequence's sums in row order, the sorted losses, each unit's math, then its
// rows' coefficients.
inline void HostObjectiveCoefficients(
    float* coef, double* metrics, const float* logp, const float* logit_sum,
    const int32_t* correct, const float* entropy, const float* log_sum_sq,
    const SeqSpan* spans, const double* reference,
    const float* reference_tokens, int num_seqs, const ObjectiveParams& p) {
  const int per_unit = SequencesPerUnit(p);
  const int stride = ReferenceValuesPerSequence(p);
  const int units = num_seqs / per_unit;
  const bool tokens_in = NeedsReferenceTokens(p);
  std::vector<SequenceSums> sums(static_cast<size_t>(units) * per_unit);
  for (int u = 0; u < units * per_unit; u += per_unit) {
    const int shared = per_unit >= 2 && spans[u + 1].len < spans[u].len
                           ? spans[u + 1].len
                           : spans[u].len;
    for (int j = 0; j < per_unit; ++j) {
      const SeqSpan& span = spans[u + j];
      for (int t = 0; t < span.len; ++t) {
        const int r = span.start + t;
        AddRow(p, t, shared, logp[r], logit_sum[r], correct[r], entropy[r],
               tokens_in ? reference_tokens[r] : 0.0f,
               p.use_weighting ? log_sum_sq[r] : 0.0f, &sums[u + j]);
      }
    }
  }
  std::vector<PairTerms> sorted;
  if (p.kind == ObjectiveKind::kPreference && HasSortedTerms(p)) {
    std::vector<double> x(units), y(units);
    std::vector<int> px(units), py(units);
    sorted.assign(units, PairTerms());
    for (int k = 0; k < p.num_terms; ++k) {
      if (!IsSorted(p.loss[k])) continue;
      for (int i = 0; i < units; ++i) {
        SortedLossInputs(p, p.loss[k], &sums[2 * i], reference + 2 * i, &x[i],
                         &y[i]);
      }
      for (int i = 0; i < units; ++i) {
        px[StableRank(x.data(), units, i)] = i;
        py[StableRank(y.data(), units, i)] = i;
      }
      for (int j = 0; j < units; ++j) {
        AddSortedLoss(p, p.loss[k], p.weight[k], x.data(), y.data(), px.data(),
                      py.data(), j, sorted.data());
      }
    }
  }
  for (int u = 0; u < units * per_unit; u += per_unit) {
    int tokens[kMaxSequencesPerUnit] = {};
    for (int j = 0; j < per_unit; ++j) tokens[j] = spans[u + j].len;
    double values[kObjectiveMetricCount];
    RowScale scales[kMaxSequencesPerUnit];
    UnitCoefficients(
        p, &sums[u], reference != nullptr ? reference + u * stride : nullptr,
        tokens, sorted.empty() ? nullptr : &sorted[u / 2], values, scales);
    for (int k = 0; k < kObjectiveMetricCount; ++k) metrics[k] += values[k];
    for (int j = 0; j < per_unit; ++j) {
      const SeqSpan& span = spans[u + j];
      for (int t = 0; t < span.len; ++t) {
        const int r = span.start + t;
        coef[r] = RowCoefficient(p, scales[j], t, logp[r],
                                 tokens_in ? reference_tokens[r] : 0.0f);
      }
    }
  }
}

}  // namespace prefopt::kernels::objective_math

#endif  // PREFOPT_KERNELS_OBJECTIVE_MATH_H_
