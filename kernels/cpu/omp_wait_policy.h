// Two settings of the CPU runtime that must be in the environment before the
// libraries start, so a binary that wants them re-executes itself with them:
// - OpenMP's default wait policy keeps idle worker threads spinning after
//   each parallel region. Here they compete with OpenBLAS's own threads and
//   with the other ranks on the same cores: on this project's 2-core AMD
//   machine a GPT-2 DPO step took 10.0 s spinning versus 3.4 s with passive
//   waiting. libgomp reads the policy once at startup.
// - OpenBLAS picks its kernels by CPU model at load time, and a model newer
//   than the library knows falls back to Prescott's SSE3 kernels: Debian 12's
//   OpenBLAS 0.3.21 on a 2-core Xeon with AVX-512 (2026-12) ran sgemm at
//   45-60 GFLOP/s instead of 260-300 with OPENBLAS_CORETYPE naming an
//   AVX-512 core. OPENBLAS_CORETYPE is read only when the library loads.
#ifndef PREFOPT_KERNELS_CPU_OMP_WAIT_POLICY_H_
#define PREFOPT_KERNELS_CPU_OMP_WAIT_POLICY_H_

namespace prefopt::kernels::cpu {

// The OPENBLAS_CORETYPE to set when OpenBLAS fell back to kernels without
// AVX2 on a CPU with AVX2 and FMA (SkylakeX with AVX-512 F/BW/VL, else
// Haswell), or null when it chose AVX2 kernels or better, or the variable is
// set already.
const char* BetterOpenBlasCoreType();

// Sets OMP_WAIT_POLICY=PASSIVE if it is unset and OPENBLAS_CORETYPE if
// BetterOpenBlasCoreType() names one, and when either changed re-executes the
// current program with the same arguments (the process keeps its pid, so
// mpirun and srun are unaffected). Returns normally when nothing needed
// changing, or when re-executing failed (the program then runs with the
// defaults). Call first thing in main(), before any OpenMP region has run.
void ReexecWithCpuRuntimeSettings(char** argv);

}  // namespace prefopt::kernels::cpu

#endif  // PREFOPT_KERNELS_CPU_OMP_WAIT_POLICY_H_
