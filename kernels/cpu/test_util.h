// Helpers shared by the CPU kernel tests: seeded random tensors and error
// measures.
#ifndef PREFOPT_KERNELS_CPU_TEST_UTIL_H_
#define PREFOPT_KERNELS_CPU_TEST_UTIL_H_

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

namespace prefopt::kernels::testing {

// n samples of N(0, stddev^2) from a fixed seed.
inline std::vector<float> RandomNormal(size_t n, uint32_t seed,
                                       float stddev = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, stddev);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

// n integers uniform in [0, bound) from a fixed seed.
inline std::vector<int32_t> RandomInts(size_t n, int32_t bound, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int32_t> dist(0, bound - 1);
  std::vector<int32_t> v(n);
  for (int32_t& x : v) x = dist(rng);
  return v;
}

inline double MaxAbs(const std::vector<float>& v) {
  double m = 0.0;
  for (float x : v) m = std::max(m, static_cast<double>(std::fabs(x)));
  return m;
}

// max_i |actual_i - expected_i| / max_i |expected_i|: the error measured
// against the tensor's scale, so that entries near zero (after cancellation in
// a sum) do not demand a relative accuracy no fp32 sum has.
// A NaN anywhere in actual (or expected) counts as an infinite error.
inline double ErrorVsScale(const std::vector<float>& actual,
                           const std::vector<float>& expected) {
  double worst = 0.0;
  for (size_t i = 0; i < expected.size(); ++i) {
    const double diff = std::fabs(static_cast<double>(actual[i]) -
                                  static_cast<double>(expected[i]));
    if (std::isnan(diff)) return std::numeric_limits<double>::infinity();
    worst = std::max(worst, diff);
  }
  const double scale = MaxAbs(expected);
  return scale > 0.0 ? worst / scale : worst;
}

// after - before, elementwise: the part an accumulating op added.
inline std::vector<float> Delta(const std::vector<float>& after,
                                const std::vector<float>& before) {
  std::vector<float> d(after.size());
  for (size_t i = 0; i < after.size(); ++i) d[i] = after[i] - before[i];
  return d;
}

}  // namespace prefopt::kernels::testing

#endif  // PREFOPT_KERNELS_CPU_TEST_UTIL_H_
