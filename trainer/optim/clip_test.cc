// Clipping several gradient buffers together equals clipping their
// concatenation: one norm, one coefficient for all of them.
#include <cmath>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu/cpu_backend.h"
#include "trainer/optim/optimizer.h"

namespace prefopt::optim {
namespace {

TEST(ClipGlobalNorm, BuffersClipAsOneVector) {
  kernels::CpuBackend backend;
  std::vector<float> a = {3.0f, 0.0f, -4.0f}, b = {12.0f};
  std::vector<float> joined = {3.0f, 0.0f, -4.0f, 12.0f};
  const double norm =
      ClipGlobalNorm(&backend, {{a.data(), a.size()}, {b.data(), b.size()}},
                     /*max_norm=*/6.5);
  EXPECT_DOUBLE_EQ(norm, 13.0);
  const double single =
      ClipGlobalNorm(&backend, {{joined.data(), joined.size()}}, 6.5);
  EXPECT_DOUBLE_EQ(single, 13.0);
  EXPECT_EQ(std::vector<float>({a[0], a[1], a[2], b[0]}), joined);
  EXPECT_NEAR(b[0], 6.0, 1e-5);

  // Below the limit, and with clipping off, nothing changes.
  std::vector<float> c = {0.3f, 0.4f};
  EXPECT_NEAR(ClipGlobalNorm(&backend, {{c.data(), c.size()}}, 1.0), 0.5, 1e-7);
  EXPECT_EQ(c, std::vector<float>({0.3f, 0.4f}));
  EXPECT_DOUBLE_EQ(ClipGlobalNorm(&backend, {{b.data(), b.size()}}, 0.0),
                   std::fabs(b[0]));
}

}  // namespace
}  // namespace prefopt::optim
