// The CPU execution layer of the CUDA simulation: runs every thread of a
// kernel launch as a fiber, one block at a time per worker thread, with
// CUDA's block and warp synchronization semantics.
//
// A block's threads are fibers on one worker thread: each runs until it
// reaches a barrier (__syncthreads, __syncwarp, a shuffle) or exits, and the
// block's scheduler releases a barrier once every live thread it concerns has
// arrived. Threads that have exited drop out of every barrier, as on the GPU.
// A block in which no thread can move (a barrier some thread never reaches)
// is reported with each thread's position, and the process aborts: the
// simulated equivalent of a hung kernel. Blocks are independent and run in
// parallel on PREFOPT_CUDASIM_WORKERS threads (default: one per core).
//
// Under ThreadSanitizer every fiber is a TSan thread and barriers are the only
// synchronization between them, so a missing __syncthreads shows up as a
// data race on the shared-memory line that needs it.
#ifndef PREFOPT_KERNELS_CUDA_SIM_GRID_RUNNER_H_
#define PREFOPT_KERNELS_CUDA_SIM_GRID_RUNNER_H_

#include <vector_types.h>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>

namespace prefopt::cudasim {

// A call site in kernel code, recorded for deadlock and divergence reports.
struct SourceLocation {
  const char* file;
  int line;
  static constexpr SourceLocation Current(const char* file = __builtin_FILE(),
                                          int line = __builtin_LINE()) {
    return {file, line};
  }
};

class BlockScheduler;

// What kernel code sees as its built-in variables, for the running fiber.
struct ThreadContext {
  uint3 thread_idx;
  uint3 block_idx;
  dim3 block_dim;
  dim3 grid_dim;
  int linear = 0;  // x + y * blockDim.x + z * blockDim.x * blockDim.y
  unsigned char* dynamic_shared = nullptr;
  BlockScheduler* block = nullptr;
};

// The thread whose code is running on this worker (null outside kernels).
extern thread_local ThreadContext* current_thread;

inline ThreadContext& CurrentThread() { return *current_thread; }

struct GridLaunch {
  const char* kernel_name = "";
  dim3 grid;
  dim3 block;
  size_t dynamic_shared_bytes = 0;
  // Runs one CUDA thread (the kernel with its bound arguments).
  std::function<void()> body;
};

// Runs every block of the launch and returns when all have finished.
void RunGrid(const GridLaunch& launch);

// Prints "cudasim: <message>" and aborts: the simulation's answer to misuse
// that a GPU answers with a hang, a crash or undefined results.
[[noreturn]] void Fatal(const std::string& message);

// The positive integer in the environment variable `name`, `fallback` when it
// is unset; Fatal when it is set to anything else.
size_t PositiveEnv(const char* name, size_t fallback);

// Worker threads blocks are spread over (PREFOPT_CUDASIM_WORKERS, else the
// number of cores).
int WorkerCount();

// ---- collective operations, called by kernel code on a fiber ----

// __syncthreads: waits until every live thread of the block has arrived.
void SyncThreads(SourceLocation where);
// __syncwarp(mask): waits until every live lane of `mask` has arrived.
void SyncWarp(unsigned mask, SourceLocation where);

// How a shuffle picks its source lane (CUDA's four __shfl_*_sync forms).
enum class ShuffleMode { kIndex, kUp, kDown, kXor };

// One warp shuffle of up to 8 bytes: every lane of `mask` publishes `value`
// and receives the value of the lane that `mode`, `arg` and `width` select
// (its own where CUDA says so). A source lane that has exited, does not exist
// (a partial warp) or is not in `mask` yields all-ones bits (NaN for floats):
// CUDA leaves that value undefined, and a poisoned result makes the misuse
// visible in a test.
uint64_t Shuffle(unsigned mask, uint64_t value, ShuffleMode mode, int arg,
                 int width, SourceLocation where);

// Warp-collective exchange of pointers (for WMMA): every lane of the full
// warp publishes `mine`; on return lanes[l] is lane l's pointer. The caller
// reads through them and must then call SyncWarp before changing what they
// point to. Every lane of the warp must take part.
void WarpGather(const void* mine, const void* lanes[32], const char* what,
                SourceLocation where);

}  // namespace prefopt::cudasim

#endif  // PREFOPT_KERNELS_CUDA_SIM_GRID_RUNNER_H_
