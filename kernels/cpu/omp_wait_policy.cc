#include "kernels/cpu/omp_wait_policy.h"

#include <cblas.h>
#include <unistd.h>

#include <cctype>
#include <cstdlib>
#include <string>

namespace prefopt::kernels::cpu {

const char* BetterOpenBlasCoreType() {
  if (std::getenv("OPENBLAS_CORETYPE") != nullptr) return nullptr;
  std::string chosen = openblas_get_corename();
  for (char& c : chosen) c = static_cast<char>(std::tolower(c));
  const bool avx512 = __builtin_cpu_supports("avx512f") &&
                      __builtin_cpu_supports("avx512bw") &&
                      __builtin_cpu_supports("avx512vl");
  const bool avx2 =
      __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  // OpenBLAS's cores whose kernels use AVX2 or more: a choice among them is
  // the library's own judgment and stays; anything older on a CPU with AVX2
  // is its fallback for a model it does not know.
  for (const char* core : {"haswell", "zen", "excavator", "skylakex",
                           "cooperlake", "sapphirerapids"}) {
    if (chosen == core) return nullptr;
  }
  if (!avx2) return nullptr;
  return avx512 ? "SkylakeX" : "Haswell";
}

void ReexecWithCpuRuntimeSettings(char** argv) {
  bool changed = false;
  if (std::getenv("OMP_WAIT_POLICY") == nullptr &&
      setenv("OMP_WAIT_POLICY", "PASSIVE", /*overwrite=*/0) == 0) {
    changed = true;
  }
  const char* core = BetterOpenBlasCoreType();
  if (core != nullptr &&
      setenv("OPENBLAS_CORETYPE", core, /*overwrite=*/0) == 0) {
    changed = true;
  }
  if (!changed) return;
  execv("/proc/self/exe", argv);
  // Only reached if execv failed; the run goes on with the defaults.
}

}  // namespace prefopt::kernels::cpu
