#include "kernels/cpu/sgemm_probe.h"

#include <cmath>

#include "gtest/gtest.h"

namespace prefopt::kernels::cpu {
namespace {

// Any machine this runs on does more than 0.1 GFLOP/s on a 128^3 product;
// a broken timer or flop count shows up as 0, inf or NaN.
TEST(SgemmProbeTest, ReturnsAPlausibleRate) {
  const double gflops = MeasureSgemmGflops(128, 0.02);
  EXPECT_TRUE(std::isfinite(gflops));
  EXPECT_GT(gflops, 0.1);
  EXPECT_LT(gflops, 1e5);
}

}  // namespace
}  // namespace prefopt::kernels::cpu
