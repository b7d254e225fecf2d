#include "kernels/cpu/sgemm_probe.h"

#include <cmath>

#include "gtest/gtest.h"

namespace prefopt::kernels::cpu {
namespace {

// A broken timer or flop count shows up as 0, inf or NaN. No lower bound on
// the rate: on a loaded machine (CI, parallel tests) one 128^3 product has
// taken 75 ms, 0.056 GFLOP/s.
TEST(SgemmProbeTest, ReturnsAPlausibleRate) {
  const double gflops = MeasureSgemmGflops(128, 0.02);
  EXPECT_TRUE(std::isfinite(gflops));
  EXPECT_GT(gflops, 0.0);
  EXPECT_LT(gflops, 1e5);
}

}  // namespace
}  // namespace prefopt::kernels::cpu
