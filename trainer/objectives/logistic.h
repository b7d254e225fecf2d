// The logistic function and softplus in double precision, computed without
// overflow or cancellation for large |x| (docs/objectives.md §0: −log σ(x) is
// softplus(−x)).
#ifndef PREFOPT_TRAINER_OBJECTIVES_LOGISTIC_H_
#define PREFOPT_TRAINER_OBJECTIVES_LOGISTIC_H_

#include <algorithm>
#include <cmath>

namespace prefopt::objectives {

// log(1 + e^x).
inline double Softplus(double x) {
  return std::max(x, 0.0) + std::log1p(std::exp(-std::abs(x)));
}

// 1 / (1 + e^−x).
inline double Sigmoid(double x) {
  if (x >= 0) return 1.0 / (1.0 + std::exp(-x));
  const double e = std::exp(x);
  return e / (1.0 + e);
}

}  // namespace prefopt::objectives

#endif  // PREFOPT_TRAINER_OBJECTIVES_LOGISTIC_H_
