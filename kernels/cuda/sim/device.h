// What CUDA device code needs to compile with the host compiler and run on
// the CPU execution layer (grid_runner.h): the built-in variables, barriers,
// warp shuffles, atomics, the correctly rounded intrinsics, __shared__
// storage, bf16/half conversions (from the toolkit's own headers, which work
// on the host), WMMA (wmma.h) and the launch helper behind PREFOPT_LAUNCH.
// Kernel sources include it through kernels/cuda/launch.h and are otherwise
// unchanged CUDA.
#ifndef PREFOPT_KERNELS_CUDA_SIM_DEVICE_H_
#define PREFOPT_KERNELS_CUDA_SIM_DEVICE_H_

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <tuple>
#include <type_traits>
#include <utility>

#include "kernels/cuda/sim/grid_runner.h"
#include "kernels/cuda/sim/wmma.h"

// Static shared memory is per block: every fiber of a block runs on the same
// worker thread, one block at a time, so a thread-local static is exactly
// one block's copy. Its element type should be trivially constructible (as
// nvcc requires of __shared__ variables without initializers): otherwise the
// compiler adds a thread-local initialization guard that all fibers of the
// block share, which ThreadSanitizer reports. bf16 tiles belong in dynamic
// shared memory.
#undef __shared__
#define __shared__ static thread_local
#undef __launch_bounds__
#define __launch_bounds__(...)

#define threadIdx (::prefopt::cudasim::CurrentThread().thread_idx)
#define blockIdx (::prefopt::cudasim::CurrentThread().block_idx)
#define blockDim (::prefopt::cudasim::CurrentThread().block_dim)
#define gridDim (::prefopt::cudasim::CurrentThread().grid_dim)
inline constexpr int warpSize = 32;

inline void __syncthreads(::prefopt::cudasim::SourceLocation where =
                              ::prefopt::cudasim::SourceLocation::Current()) {
  ::prefopt::cudasim::SyncThreads(where);
}

inline void __syncwarp(unsigned mask = 0xffffffffu,
                       ::prefopt::cudasim::SourceLocation where =
                           ::prefopt::cudasim::SourceLocation::Current()) {
  ::prefopt::cudasim::SyncWarp(mask, where);
}

namespace prefopt::cudasim {

template <typename T>
T ShuffleValue(unsigned mask, T var, ShuffleMode mode, int arg, int width,
               SourceLocation where) {
  static_assert(std::is_trivially_copyable_v<T> && sizeof(T) <= 8,
                "CUDA shuffles move values of at most 8 bytes");
  uint64_t bits = 0;
  std::memcpy(&bits, &var, sizeof(T));
  bits = Shuffle(mask, bits, mode, arg, width, where);
  T out;
  std::memcpy(&out, &bits, sizeof(T));
  return out;
}

// The dynamic shared memory of the running block (PREFOPT_DYNAMIC_SHARED),
// 128-byte aligned.
template <typename T>
T* DynamicShared() {
  return reinterpret_cast<T*>(CurrentThread().dynamic_shared);
}

// Checks a launch configuration as the CUDA runtime does and, when it is
// valid, queues the grid on `stream`; otherwise sets the error
// cudaGetLastError returns. Defined in runtime.cc.
void EnqueueKernel(cudaStream_t stream, const void* kernel, GridLaunch launch);

// The object PREFOPT_LAUNCH(kernel, grid, block, smem, stream) yields: called
// with the kernel's arguments, it binds copies of them (as a GPU launch does)
// and queues the grid.
template <typename... Params>
class KernelLaunch {
 public:
  KernelLaunch(void (*kernel)(Params...), const char* name, dim3 grid,
               dim3 block, size_t smem, cudaStream_t stream)
      : kernel_(kernel), stream_(stream) {
    launch_.kernel_name = name;
    launch_.grid = grid;
    launch_.block = block;
    launch_.dynamic_shared_bytes = smem;
  }

  template <typename... Args>
  void operator()(Args&&... args) && {
    static_assert(sizeof...(Args) == sizeof...(Params),
                  "kernel launched with the wrong number of arguments");
    std::tuple<std::decay_t<Params>...> bound(
        static_cast<std::decay_t<Params>>(std::forward<Args>(args))...);
    void (*kernel)(Params...) = kernel_;
    launch_.body = [kernel, bound]() { std::apply(kernel, bound); };
    EnqueueKernel(stream_, reinterpret_cast<const void*>(kernel_),
                  std::move(launch_));
  }

 private:
  void (*kernel_)(Params...);
  cudaStream_t stream_;
  GridLaunch launch_;
};

template <typename... Params>
KernelLaunch<Params...> Launch(void (*kernel)(Params...), const char* name,
                               dim3 grid, dim3 block, size_t smem,
                               cudaStream_t stream) {
  return KernelLaunch<Params...>(kernel, name, grid, block, smem, stream);
}

}  // namespace prefopt::cudasim

// The runtime's C++ overload for kernels (cuda_runtime.h declares it for nvcc
// only).
template <typename... Params>
cudaError_t cudaFuncSetAttribute(void (*kernel)(Params...),
                                 cudaFuncAttribute attr, int value) {
  return ::cudaFuncSetAttribute(reinterpret_cast<const void*>(kernel), attr,
                                value);
}

// ---- warp shuffles (CUDA's lane, width and mask rules: grid_runner.h) ----

template <typename T>
T __shfl_sync(unsigned mask, T var, int src_lane, int width = 32,
              ::prefopt::cudasim::SourceLocation where =
                  ::prefopt::cudasim::SourceLocation::Current()) {
  return ::prefopt::cudasim::ShuffleValue(
      mask, var, ::prefopt::cudasim::ShuffleMode::kIndex, src_lane, width,
      where);
}

template <typename T>
T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = 32,
                 ::prefopt::cudasim::SourceLocation where =
                     ::prefopt::cudasim::SourceLocation::Current()) {
  return ::prefopt::cudasim::ShuffleValue(
      mask, var, ::prefopt::cudasim::ShuffleMode::kUp, static_cast<int>(delta),
      width, where);
}

template <typename T>
T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = 32,
                   ::prefopt::cudasim::SourceLocation where =
                       ::prefopt::cudasim::SourceLocation::Current()) {
  return ::prefopt::cudasim::ShuffleValue(
      mask, var, ::prefopt::cudasim::ShuffleMode::kDown,
      static_cast<int>(delta), width, where);
}

template <typename T>
T __shfl_xor_sync(unsigned mask, T var, int lane_mask, int width = 32,
                  ::prefopt::cudasim::SourceLocation where =
                      ::prefopt::cudasim::SourceLocation::Current()) {
  return ::prefopt::cudasim::ShuffleValue(mask, var,
                                          ::prefopt::cudasim::ShuffleMode::kXor,
                                          lane_mask, width, where);
}

// ---- atomics: blocks run in parallel on worker threads ----

template <typename T>
T atomicAdd(T* address, T val) {
  if constexpr (std::is_floating_point_v<T>) {
    T old = __atomic_load_n(address, __ATOMIC_RELAXED);
    T sum;
    do {
      sum = old + val;
    } while (!__atomic_compare_exchange(address, &old, &sum, false,
                                        __ATOMIC_SEQ_CST, __ATOMIC_RELAXED));
    return old;
  } else {
    return __atomic_fetch_add(address, val, __ATOMIC_SEQ_CST);
  }
}

template <typename T>
T atomicMax(T* address, T val) {
  T old = __atomic_load_n(address, __ATOMIC_RELAXED);
  while (old < val &&
         !__atomic_compare_exchange_n(address, &old, val, false,
                                      __ATOMIC_SEQ_CST, __ATOMIC_RELAXED)) {
  }
  return old;
}

template <typename T>
T atomicCAS(T* address, T compare, T val) {
  __atomic_compare_exchange_n(address, &compare, val, false, __ATOMIC_SEQ_CST,
                              __ATOMIC_SEQ_CST);
  return compare;
}

// ---- arithmetic intrinsics ----
// The _rn forms are IEEE operations with round-to-nearest-even, which is
// what host float arithmetic does; the simulation is compiled with
// -ffp-contract=off, so a product is never fused into a following sum, as
// __fmul_rn guarantees on the GPU.

inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __frcp_rn(float a) { return 1.0f / a; }
inline float __fsqrt_rn(float a) { return std::sqrt(a); }
inline float __frsqrt_rn(float a) {
  // Correctly rounded 1/sqrt(a): the double result has 53 bits, enough that
  // rounding it to float is the correctly rounded float result.
  return static_cast<float>(1.0 / std::sqrt(static_cast<double>(a)));
}

// CUDA's integer min/max device functions (the kernels use the int forms).
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }

#endif  // PREFOPT_KERNELS_CUDA_SIM_DEVICE_H_
