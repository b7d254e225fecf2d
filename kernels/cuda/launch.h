// The two places where CUDA syntax differs between nvcc and the CPU
// simulation (kernels/cuda/sim/): launching a kernel and declaring a
// kernel's dynamic shared memory. Kernel sources use these macros and are
// otherwise plain CUDA, compiled by nvcc for the GPU and by the host compiler
// for the simulation.
//
//   PREFOPT_LAUNCH(MyKernel, grid, block, smem_bytes, stream)(args...);
//   PREFOPT_DYNAMIC_SHARED(unsigned char, smem);  // first line of a kernel
//
// A kernel name containing a comma (a template with several arguments) must
// be passed through a function-pointer variable.
#ifndef PREFOPT_KERNELS_CUDA_LAUNCH_H_
#define PREFOPT_KERNELS_CUDA_LAUNCH_H_

#if defined(__CUDACC__)

#define PREFOPT_LAUNCH(kernel, grid, block, smem, stream) \
  kernel<<<(grid), (block), (smem), (stream)>>>
#define PREFOPT_DYNAMIC_SHARED(type, name) \
  extern __shared__ __align__(128) type name[]

#else

#include "kernels/cuda/sim/device.h"

#define PREFOPT_LAUNCH(kernel, grid, block, smem, stream)                \
  ::prefopt::cudasim::Launch((kernel), #kernel, (grid), (block), (smem), \
                             (stream))
#define PREFOPT_DYNAMIC_SHARED(type, name) \
  type* const name = ::prefopt::cudasim::DynamicShared<type>()

#endif

#endif  // PREFOPT_KERNELS_CUDA_LAUNCH_H_
