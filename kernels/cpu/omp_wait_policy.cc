#include "kernels/cpu/omp_wait_policy.h"

#include <unistd.h>

#include <cstdlib>

namespace prefopt::kernels::cpu {

void ReexecWithPassiveOpenMpWait(char** argv) {
  if (std::getenv("OMP_WAIT_POLICY") != nullptr) return;
  if (setenv("OMP_WAIT_POLICY", "PASSIVE", /*overwrite=*/0) != 0) return;
  execv("/proc/self/exe", argv);
  // Only reached if execv failed; the run goes on with the default policy.
}

}  // namespace prefopt::kernels::cpu
