// OpenMP's default wait policy keeps idle worker threads spinning after each
// parallel region. Here they compete with OpenBLAS's own threads and with the
// other ranks on the same cores: on this project's 2-core machine a GPT-2 DPO
// step took 10.0 s spinning versus 3.4 s with passive waiting. libgomp reads
// the policy once at startup, so a binary that wants it must be started with
// it set.
#ifndef PREFOPT_KERNELS_CPU_OMP_WAIT_POLICY_H_
#define PREFOPT_KERNELS_CPU_OMP_WAIT_POLICY_H_

namespace prefopt::kernels::cpu {

// If OMP_WAIT_POLICY is unset, sets it to PASSIVE and re-executes the current
// program with the same arguments (the process keeps its pid, so mpirun and
// srun are unaffected). Returns normally when the policy was already set, or
// when re-executing failed (the program then runs with the default policy).
// Call first thing in main(), before any OpenMP region has run.
void ReexecWithPassiveOpenMpWait(char** argv);

}  // namespace prefopt::kernels::cpu

#endif  // PREFOPT_KERNELS_CPU_OMP_WAIT_POLICY_H_
