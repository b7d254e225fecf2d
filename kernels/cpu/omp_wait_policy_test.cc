// BetterOpenBlasCoreType: never overrides a user's OPENBLAS_CORETYPE, and
// otherwise names a core only for a CPU with the features its kernels need.
#include "kernels/cpu/omp_wait_policy.h"

#include <cstdlib>
#include <iostream>
#include <string>

#include "gtest/gtest.h"

namespace prefopt::kernels::cpu {
namespace {

TEST(BetterOpenBlasCoreTypeTest, KeepsTheUsersChoice) {
  ASSERT_EQ(setenv("OPENBLAS_CORETYPE", "Prescott", 1), 0);
  EXPECT_EQ(BetterOpenBlasCoreType(), nullptr);
  ASSERT_EQ(unsetenv("OPENBLAS_CORETYPE"), 0);
}

TEST(BetterOpenBlasCoreTypeTest, NamesOnlyCoresThisCpuCanRun) {
  ASSERT_EQ(unsetenv("OPENBLAS_CORETYPE"), 0);
  const char* core = BetterOpenBlasCoreType();
  if (core == nullptr) {
    std::cout << "OpenBLAS's own choice kept\n";
    return;
  }
  std::cout << "OpenBLAS's choice replaced by " << core << "\n";
  const std::string name = core;
  if (name == "SkylakeX") {
    EXPECT_TRUE(__builtin_cpu_supports("avx512f"));
    EXPECT_TRUE(__builtin_cpu_supports("avx512bw"));
  } else {
    EXPECT_EQ(name, "Haswell");
    EXPECT_TRUE(__builtin_cpu_supports("avx2"));
    EXPECT_TRUE(__builtin_cpu_supports("fma"));
  }
}

}  // namespace
}  // namespace prefopt::kernels::cpu
