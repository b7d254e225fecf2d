// Test helper: the per-token quantities of docs/objectives.md §0 and §2
// computed from a full row of logits in double, the way no kernel does
// (everything materialized), and the logit gradient rebuilt from per-token
// coefficients.
#ifndef PREFOPT_TRAINER_OBJECTIVES_NAIVE_LOGITS_H_
#define PREFOPT_TRAINER_OBJECTIVES_NAIVE_LOGITS_H_

#include <algorithm>
#include <cmath>
#include <vector>

namespace prefopt::objectives::testing {

struct NaiveRow {
  double logp = 0;      // ℓ = log softmax(z)[y]
  double ref_logp = 0;  // ℓ̃
  double kl = 0;        // K = Σ_v p (log π − log p)
  double logit_sum = 0;
  bool correct = false;       // argmax z == y (first maximum)
  std::vector<double> pi, p;  // softmax(z), softmax(z̃)
};

inline std::vector<double> LogSoftmax(const std::vector<double>& z) {
  const double m = *std::max_element(z.begin(), z.end());
  double s = 0;
  for (double x : z) s += std::exp(x - m);
  const double lse = m + std::log(s);
  std::vector<double> out(z.size());
  for (size_t v = 0; v < z.size(); ++v) out[v] = z[v] - lse;
  return out;
}

inline NaiveRow NaiveRowOf(const std::vector<double>& z,
                           const std::vector<double>& zr, int label) {
  const std::vector<double> lp = LogSoftmax(z), lr = LogSoftmax(zr);
  NaiveRow r;
  r.logp = lp[label];
  r.ref_logp = lr[label];
  r.correct = std::max_element(z.begin(), z.end()) - z.begin() == label;
  for (size_t v = 0; v < z.size(); ++v) {
    r.pi.push_back(std::exp(lp[v]));
    r.p.push_back(std::exp(lr[v]));
    r.kl += r.p[v] * (lp[v] - lr[v]);
    r.logit_sum += z[v];
  }
  return r;
}

// dz_v = A (π_v − 1[v = y]) + B (π_v − p_v).
inline std::vector<double> LogitGrad(const NaiveRow& r, int label, double a,
                                     double b) {
  std::vector<double> dz(r.pi.size());
  for (size_t v = 0; v < dz.size(); ++v) {
    dz[v] = a * (r.pi[v] - (static_cast<int>(v) == label ? 1.0 : 0.0)) +
            b * (r.pi[v] - r.p[v]);
  }
  return dz;
}

}  // namespace prefopt::objectives::testing

#endif  // PREFOPT_TRAINER_OBJECTIVES_NAIVE_LOGITS_H_
