#include "kernels/cpu/sgemm_probe.h"

#include <cblas.h>

#include <chrono>
#include <cstddef>
#include <random>
#include <vector>

namespace prefopt::kernels::cpu {

double MeasureSgemmGflops(int n, double min_seconds) {
  const size_t size = static_cast<size_t>(n) * n;
  std::vector<float> a(size), b(size), c(size);
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  for (float& x : a) x = dist(rng);
  for (float& x : b) x = dist(rng);
  auto multiply = [&] {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f,
                a.data(), n, b.data(), n, 0.0f, c.data(), n);
  };
  multiply();  // warm-up: thread pool start, page faults of c
  using Clock = std::chrono::steady_clock;
  const Clock::time_point start = Clock::now();
  long calls = 0;
  double elapsed = 0.0;
  do {
    multiply();
    ++calls;
    elapsed = std::chrono::duration<double>(Clock::now() - start).count();
  } while (elapsed < min_seconds);
  return 2.0 * n * n * static_cast<double>(n) * calls / elapsed * 1e-9;
}

}  // namespace prefopt::kernels::cpu
