#include "kernels/cuda/sim/grid_runner.h"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#if defined(__SANITIZE_THREAD__)
#include <sanitizer/tsan_interface.h>
#define PREFOPT_CUDASIM_TSAN 1
// In libtsan, not in its public header: stop and resume recording the
// calling (fiber's) memory accesses; synchronization is still recorded.
extern "C" void __tsan_ignore_thread_begin();
extern "C" void __tsan_ignore_thread_end();
#endif
#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/common_interface_defs.h>
#define PREFOPT_CUDASIM_ASAN 1
#endif

// Saves the callee-saved registers and the floating-point control words of
// the running context on its stack, stores its stack pointer in *save_sp and
// resumes the context whose stack pointer is new_sp. A user-space switch
// (about 20 instructions) instead of swapcontext, which makes a system call
// for the signal mask on every switch; a kernel launch switches millions of
// times.
extern "C" void prefopt_cudasim_switch(void** save_sp, void* new_sp);
asm(R"(
  .text
  .globl prefopt_cudasim_switch
  .type prefopt_cudasim_switch, @function
prefopt_cudasim_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  stmxcsr (%rsp)
  fnstcw 4(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr (%rsp)
  fldcw 4(%rsp)
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size prefopt_cudasim_switch, .-prefopt_cudasim_switch
  .section .note.GNU-stack,"",@progbits
  .text
)");

namespace prefopt::cudasim {

thread_local ThreadContext* current_thread = nullptr;

namespace {

constexpr int kWarpSize = 32;
constexpr unsigned kFullMask = 0xffffffffu;

#if defined(PREFOPT_CUDASIM_TSAN) || defined(PREFOPT_CUDASIM_ASAN)
// Instrumented frames are several times larger.
constexpr size_t kStackBytes = size_t{1} << 20;
#else
constexpr size_t kStackBytes = size_t{128} << 10;
#endif

std::string Where(const SourceLocation& w) {
  return std::string(w.file) + ":" + std::to_string(w.line);
}

std::string Dim(const uint3& d) {
  return "(" + std::to_string(d.x) + "," + std::to_string(d.y) + "," +
         std::to_string(d.z) + ")";
}

std::string Hex(unsigned v) {
  char buf[16];
  std::snprintf(buf, sizeof(buf), "0x%08x", v);
  return buf;
}

// The simulation's own bookkeeping (fiber states, exchange slots, the
// scheduler's loop) is shared between fibers and their scheduler without
// the happens-before edges TSan would need: fibers switch without
// synchronizing, so that only barriers order kernel threads. Its accesses
// are therefore hidden from ThreadSanitizer, which then sees exactly the
// kernel's own.
class InternalSection {
 public:
  InternalSection() {
#if defined(PREFOPT_CUDASIM_TSAN)
    __tsan_ignore_thread_begin();
#endif
  }
  ~InternalSection() {
#if defined(PREFOPT_CUDASIM_TSAN)
    __tsan_ignore_thread_end();
#endif
  }
  InternalSection(const InternalSection&) = delete;
  InternalSection& operator=(const InternalSection&) = delete;
};

enum class FiberState { kRunnable, kAtBlockBarrier, kAtWarpBarrier, kExited };

struct Fiber {
  Fiber() {
    const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
    mapping_bytes = kStackBytes + page;
    void* m = mmap(nullptr, mapping_bytes, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (m == MAP_FAILED) Fatal("cannot map a fiber stack");
    mapping = static_cast<unsigned char*>(m);
    // The lowest page stays inaccessible: a stack overflow faults instead of
    // corrupting the neighbouring stack.
    mprotect(mapping, page, PROT_NONE);
    stack_lo = mapping + page;
#if defined(PREFOPT_CUDASIM_TSAN)
    tsan_fiber = __tsan_create_fiber(0);
#endif
  }
  // The TSan fiber is not destroyed: a parked fiber sits inside an
  // InternalSection, and TSan reports a thread that ends with its accesses
  // ignored. Schedulers live as long as their worker thread, so this keeps a
  // few hundred bytes per fiber until exit.
  ~Fiber() { munmap(mapping, mapping_bytes); }
  Fiber(const Fiber&) = delete;
  Fiber& operator=(const Fiber&) = delete;

  unsigned char* mapping = nullptr;
  size_t mapping_bytes = 0;
  unsigned char* stack_lo = nullptr;
  void* sp = nullptr;
  bool started = false;
  FiberState state = FiberState::kExited;
  unsigned mask = 0;  // at a warp barrier: the lanes it waits for
  const char* what = "";
  SourceLocation where{"", 0};
  ThreadContext ctx;
  // Warp exchange: two slots used alternately, so a lane that runs ahead into
  // the next shuffle does not overwrite a value another lane has yet to read.
  uint64_t slot[2] = {0, 0};
  unsigned exchanges = 0;
  uint64_t release_stamp = 0;  // which release let it through last
  int released_slot = 0;       // the slot holding the value of that round
  void* tsan_fiber = nullptr;
  void* asan_fake_stack = nullptr;
};

}  // namespace

// Runs the blocks handed to one worker thread; see grid_runner.h.
class BlockScheduler {
 public:
  BlockScheduler() {
#if defined(PREFOPT_CUDASIM_TSAN)
    scheduler_tsan_fiber_ = __tsan_get_current_fiber();
#endif
  }
  BlockScheduler(const BlockScheduler&) = delete;
  BlockScheduler& operator=(const BlockScheduler&) = delete;

  static BlockScheduler& ForThisThread() {
    thread_local BlockScheduler scheduler;
    return scheduler;
  }

  void RunBlock(const GridLaunch& launch, uint3 block_idx);

  void WaitAtBlockBarrier(SourceLocation where);
  void WaitAtWarpBarrier(unsigned mask, const char* what, SourceLocation where);
  uint64_t Shuffle(unsigned mask, uint64_t value, ShuffleMode mode, int arg,
                   int width, SourceLocation where);
  void WarpGather(const void* mine, const void* lanes[32], const char* what,
                  SourceLocation where);

 private:
  static void FiberMain();
  Fiber& Running() { return *fibers_[running_]; }
  void SwitchToFiber(int i);
  void SwitchToScheduler();
  bool ReleaseWarps();
  bool ReleaseBlock();
  [[noreturn]] void ReportStuck();
  [[noreturn]] void Fail(const Fiber& f, const std::string& message);
  int Lanes(int warp) const {
    return std::min(kWarpSize, threads_ - warp * kWarpSize);
  }

  std::vector<std::unique_ptr<Fiber>> fibers_;
  int threads_ = 0;
  int live_ = 0;
  int running_ = -1;
  void* scheduler_sp_ = nullptr;
  const GridLaunch* launch_ = nullptr;
  uint3 block_idx_{};
  std::vector<unsigned char> dynamic_shared_;
  uint64_t release_count_ = 0;
  unsigned block_generation_ = 0;
  std::vector<unsigned> warp_generation_;
  // ThreadSanitizer synchronization objects (their addresses): block start
  // and end, and each barrier's two alternating generations.
  char start_sync_ = 0, end_sync_ = 0;
  char block_sync_[2] = {0, 0};
  std::vector<char> warp_sync_;
  void* scheduler_tsan_fiber_ = nullptr;
  const void* asan_scheduler_bottom_ = nullptr;
  size_t asan_scheduler_size_ = 0;
};

thread_local BlockScheduler* current_scheduler = nullptr;

void BlockScheduler::FiberMain() {
#if defined(PREFOPT_CUDASIM_ASAN)
  {
    BlockScheduler* s = current_scheduler;
    __sanitizer_finish_switch_fiber(nullptr, &s->asan_scheduler_bottom_,
                                    &s->asan_scheduler_size_);
  }
#endif
  for (;;) {
    const GridLaunch* launch;
    {
      InternalSection internal;
      launch = current_scheduler->launch_;
    }
#if defined(PREFOPT_CUDASIM_TSAN)
    __tsan_acquire(&current_scheduler->start_sync_);
#endif
    launch->body();
#if defined(PREFOPT_CUDASIM_TSAN)
    __tsan_release(&current_scheduler->end_sync_);
#endif
    InternalSection internal;
    BlockScheduler* s = current_scheduler;
    s->Running().state = FiberState::kExited;
    --s->live_;
    s->SwitchToScheduler();
  }
}

void BlockScheduler::SwitchToFiber(int i) {
  running_ = i;
  Fiber& f = *fibers_[i];
  current_thread = &f.ctx;
  if (!f.started) {
    f.started = true;
    // A fresh stack that "returns" into FiberMain: a zero return address
    // for FiberMain itself, FiberMain's address, six callee-saved registers
    // and the control words, as prefopt_cudasim_switch pops them.
    auto* top = reinterpret_cast<uint64_t*>(
        reinterpret_cast<uintptr_t>(f.stack_lo + kStackBytes) & ~uintptr_t{15});
    top[-1] = 0;
    top[-2] = reinterpret_cast<uint64_t>(&FiberMain);
    for (int r = 3; r <= 8; ++r) top[-r] = 0;
    uint32_t mxcsr = 0;
    uint16_t fcw = 0;
    asm volatile("stmxcsr %0" : "=m"(mxcsr));
    asm volatile("fnstcw %0" : "=m"(fcw));
    uint64_t control = mxcsr | (static_cast<uint64_t>(fcw) << 32);
    top[-9] = control;
    f.sp = &top[-9];
  }
#if defined(PREFOPT_CUDASIM_TSAN)
  __tsan_switch_to_fiber(f.tsan_fiber, __tsan_switch_to_fiber_no_sync);
#endif
#if defined(PREFOPT_CUDASIM_ASAN)
  void* fake_stack = nullptr;
  __sanitizer_start_switch_fiber(&fake_stack, f.stack_lo, kStackBytes);
#endif
  prefopt_cudasim_switch(&scheduler_sp_, f.sp);
#if defined(PREFOPT_CUDASIM_ASAN)
  __sanitizer_finish_switch_fiber(fake_stack, nullptr, nullptr);
#endif
  current_thread = nullptr;
  running_ = -1;
}

void BlockScheduler::SwitchToScheduler() {
  Fiber& f = Running();
#if defined(PREFOPT_CUDASIM_TSAN)
  __tsan_switch_to_fiber(scheduler_tsan_fiber_, __tsan_switch_to_fiber_no_sync);
#endif
#if defined(PREFOPT_CUDASIM_ASAN)
  __sanitizer_start_switch_fiber(&f.asan_fake_stack, asan_scheduler_bottom_,
                                 asan_scheduler_size_);
#endif
  prefopt_cudasim_switch(&f.sp, scheduler_sp_);
#if defined(PREFOPT_CUDASIM_ASAN)
  __sanitizer_finish_switch_fiber(f.asan_fake_stack, &asan_scheduler_bottom_,
                                  &asan_scheduler_size_);
#endif
}

void BlockScheduler::RunBlock(const GridLaunch& launch, uint3 block_idx) {
  InternalSection internal;
  current_scheduler = this;
  launch_ = &launch;
  block_idx_ = block_idx;
  const dim3 b = launch.block;
  threads_ = static_cast<int>(b.x * b.y * b.z);
  while (static_cast<int>(fibers_.size()) < threads_) {
    fibers_.push_back(std::make_unique<Fiber>());
  }
  const int warps = (threads_ + kWarpSize - 1) / kWarpSize;
  warp_generation_.assign(warps, 0);
  warp_sync_.assign(2 * warps, 0);
  block_generation_ = 0;
  // Shared memory starts as garbage on the GPU; all-ones bytes (NaN as
  // floats) make a read before the first write visible.
  dynamic_shared_.assign(launch.dynamic_shared_bytes + 128, 0xff);
  auto* dynamic = reinterpret_cast<unsigned char*>(
      (reinterpret_cast<uintptr_t>(dynamic_shared_.data()) + 127) &
      ~uintptr_t{127});
  for (int t = 0; t < threads_; ++t) {
    Fiber& f = *fibers_[t];
    f.state = FiberState::kRunnable;
    f.exchanges = 0;
    f.release_stamp = 0;
    ThreadContext& c = f.ctx;
    c.thread_idx = uint3{t % b.x, (t / b.x) % b.y, t / (b.x * b.y)};
    c.block_idx = block_idx;
    c.block_dim = b;
    c.grid_dim = launch.grid;
    c.linear = t;
    c.dynamic_shared = dynamic;
    c.block = this;
  }
  live_ = threads_;
#if defined(PREFOPT_CUDASIM_TSAN)
  __tsan_release(&start_sync_);
#endif
  // Threads run in increasing order in even blocks and decreasing order in
  // odd ones: a kernel whose result depends on the order (a missing barrier
  // between a shared-memory write and another thread's read) gives wrong
  // results in one of the two, without ThreadSanitizer.
  const bool reverse = (block_idx.x + block_idx.y + block_idx.z) % 2 == 1;
  for (;;) {
    for (int i = 0; i < threads_; ++i) {
      const int t = reverse ? threads_ - 1 - i : i;
      if (fibers_[t]->state == FiberState::kRunnable) SwitchToFiber(t);
    }
    if (live_ == 0) break;
    if (!ReleaseWarps() && !ReleaseBlock()) ReportStuck();
  }
#if defined(PREFOPT_CUDASIM_TSAN)
  __tsan_acquire(&end_sync_);
#endif
  launch_ = nullptr;
}

bool BlockScheduler::ReleaseWarps() {
  bool released = false;
  const int warps = (threads_ + kWarpSize - 1) / kWarpSize;
  for (int w = 0; w < warps; ++w) {
    const int base = w * kWarpSize, lanes = Lanes(w);
    unsigned done = 0;  // lanes released or checked in this pass
    for (int l = 0; l < lanes; ++l) {
      const Fiber& f = *fibers_[base + l];
      if (f.state != FiberState::kAtWarpBarrier || (done >> l & 1)) continue;
      const unsigned mask = f.mask;
      bool ready = true;
      for (int m = 0; m < lanes; ++m) {
        if (!(mask >> m & 1)) continue;
        const Fiber& g = *fibers_[base + m];
        if (g.state == FiberState::kExited) continue;
        if (g.state != FiberState::kAtWarpBarrier) {
          ready = false;
          continue;
        }
        if (g.mask != mask) {
          Fail(g, std::string("lane ") + std::to_string(m) + " waits at " +
                      g.what + " with mask " + Hex(g.mask) + " at " +
                      Where(g.where) + " while lane " + std::to_string(l) +
                      " waits at " + f.what + " with mask " + Hex(mask) +
                      " at " + Where(f.where) +
                      ": the lanes of one warp-synchronous operation must "
                      "pass the same mask");
        }
      }
      done |= mask;
      if (!ready) continue;
      ++release_count_;
      for (int m = 0; m < lanes; ++m) {
        Fiber& g = *fibers_[base + m];
        if (!(mask >> m & 1) || g.state != FiberState::kAtWarpBarrier) {
          continue;
        }
        g.state = FiberState::kRunnable;
        g.release_stamp = release_count_;
        g.released_slot = static_cast<int>((g.exchanges + 1) & 1);
      }
      ++warp_generation_[w];
      released = true;
    }
  }
  return released;
}

bool BlockScheduler::ReleaseBlock() {
  const Fiber* first = nullptr;
  for (int t = 0; t < threads_; ++t) {
    const Fiber& f = *fibers_[t];
    if (f.state == FiberState::kExited) continue;
    if (f.state != FiberState::kAtBlockBarrier) return false;
    if (first == nullptr) {
      first = &f;
    } else if (f.where.line != first->where.line ||
               std::strcmp(f.where.file, first->where.file) != 0) {
      Fail(f, "divergent __syncthreads: thread " +
                  std::to_string(first->ctx.linear) + " waits at " +
                  Where(first->where) + ", thread " +
                  std::to_string(f.ctx.linear) + " at " + Where(f.where) +
                  " (a barrier must be reached by the whole block at the "
                  "same place)");
    }
  }
  for (int t = 0; t < threads_; ++t) {
    Fiber& f = *fibers_[t];
    if (f.state == FiberState::kAtBlockBarrier) f.state = FiberState::kRunnable;
  }
  ++block_generation_;
  return true;
}

void BlockScheduler::ReportStuck() {
  std::string report = std::string("deadlock in kernel ") +
                       launch_->kernel_name + ", block " + Dim(block_idx_) +
                       ": no thread can continue";
  int t = 0;
  while (t < threads_) {
    const Fiber& f = *fibers_[t];
    int end = t + 1;
    auto same = [&f](const Fiber& g) {
      return g.state == f.state && g.mask == f.mask &&
             g.where.line == f.where.line && g.where.file == f.where.file;
    };
    while (end < threads_ && same(*fibers_[end])) ++end;
    report += "\n  thread " + std::to_string(t);
    if (end - t > 1) report += "-" + std::to_string(end - 1);
    switch (f.state) {
      case FiberState::kExited:
        report += ": exited";
        break;
      case FiberState::kAtBlockBarrier:
        report += ": waiting at __syncthreads at " + Where(f.where);
        break;
      case FiberState::kAtWarpBarrier:
        report += std::string(": waiting at ") + f.what + " (mask " +
                  Hex(f.mask) + ") at " + Where(f.where);
        break;
      case FiberState::kRunnable:
        report += ": runnable";
        break;
    }
    t = end;
  }
  Fatal(report);
}

void BlockScheduler::Fail(const Fiber& f, const std::string& message) {
  Fatal(std::string("kernel ") + launch_->kernel_name + ", block " +
        Dim(block_idx_) + ", thread " + Dim(f.ctx.thread_idx) + ": " + message);
}

void BlockScheduler::WaitAtBlockBarrier(SourceLocation where) {
  Fiber& f = Running();
  f.state = FiberState::kAtBlockBarrier;
  f.where = where;
  f.what = "__syncthreads";
  [[maybe_unused]] const int generation =
      static_cast<int>(block_generation_ & 1);
#if defined(PREFOPT_CUDASIM_TSAN)
  __tsan_release(&block_sync_[generation]);
#endif
  SwitchToScheduler();
#if defined(PREFOPT_CUDASIM_TSAN)
  __tsan_acquire(&block_sync_[generation]);
#endif
}

void BlockScheduler::WaitAtWarpBarrier(unsigned mask, const char* what,
                                       SourceLocation where) {
  Fiber& f = Running();
  const int lane = f.ctx.linear % kWarpSize;
  if (!(mask >> lane & 1)) {
    Fail(f, std::string(what) + " at " + Where(where) + " with mask " +
                Hex(mask) + " called by lane " + std::to_string(lane) +
                ", which is not in the mask");
  }
  f.state = FiberState::kAtWarpBarrier;
  f.mask = mask;
  f.where = where;
  f.what = what;
  const int warp = f.ctx.linear / kWarpSize;
  [[maybe_unused]] const int generation =
      static_cast<int>(warp_generation_[warp] & 1);
#if defined(PREFOPT_CUDASIM_TSAN)
  __tsan_release(&warp_sync_[2 * warp + generation]);
#endif
  SwitchToScheduler();
#if defined(PREFOPT_CUDASIM_TSAN)
  __tsan_acquire(&warp_sync_[2 * warp + generation]);
#endif
}

uint64_t BlockScheduler::Shuffle(unsigned mask, uint64_t value,
                                 ShuffleMode mode, int arg, int width,
                                 SourceLocation where) {
  Fiber& f = Running();
  if (width <= 0 || width > kWarpSize || (width & (width - 1)) != 0) {
    Fail(f, "shuffle at " + Where(where) + " with width " +
                std::to_string(width) + ": CUDA takes a power of two <= 32");
  }
  static constexpr const char* kNames[] = {
      "__shfl_sync", "__shfl_up_sync", "__shfl_down_sync", "__shfl_xor_sync"};
  f.slot[f.exchanges & 1] = value;
  ++f.exchanges;
  WaitAtWarpBarrier(mask, kNames[static_cast<int>(mode)], where);
  const int lane = f.ctx.linear % kWarpSize;
  const int segment = lane & ~(width - 1);
  int src = lane;
  switch (mode) {
    case ShuffleMode::kIndex:
      src = segment + (arg & (width - 1));
      break;
    case ShuffleMode::kUp:
      src = (lane - segment) >= arg ? lane - arg : lane;
      break;
    case ShuffleMode::kDown:
      src = (lane - segment) + arg < width ? lane + arg : lane;
      break;
    case ShuffleMode::kXor:
      src = lane ^ arg;
      if (src < segment || src >= segment + width) src = lane;
      break;
  }
  const int warp_base = f.ctx.linear - lane;
  if (src < 0 || src >= kWarpSize || warp_base + src >= threads_ ||
      !(mask >> src & 1)) {
    return ~uint64_t{0};
  }
  const Fiber& s = *fibers_[warp_base + src];
  if (s.release_stamp != f.release_stamp) return ~uint64_t{0};
  return s.slot[s.released_slot];
}

void BlockScheduler::WarpGather(const void* mine, const void* lanes[32],
                                const char* what, SourceLocation where) {
  Fiber& f = Running();
  f.slot[f.exchanges & 1] = reinterpret_cast<uintptr_t>(mine);
  ++f.exchanges;
  WaitAtWarpBarrier(kFullMask, what, where);
  const int lane = f.ctx.linear % kWarpSize;
  const int warp_base = f.ctx.linear - lane;
  for (int l = 0; l < kWarpSize; ++l) {
    const Fiber* s =
        warp_base + l < threads_ ? fibers_[warp_base + l].get() : nullptr;
    if (s == nullptr || s->release_stamp != f.release_stamp) {
      Fail(f, std::string(what) + " at " + Where(where) + ": lane " +
                  std::to_string(l) +
                  (s == nullptr ? " does not exist (partial warp)"
                                : " did not take part") +
                  "; warp matrix operations need all 32 lanes");
    }
    lanes[l] = reinterpret_cast<const void*>(
        static_cast<uintptr_t>(s->slot[s->released_slot]));
  }
}

void WarpGather(const void* mine, const void* lanes[32], const char* what,
                SourceLocation where) {
  InternalSection internal;
  current_thread->block->WarpGather(mine, lanes, what, where);
}

void SyncThreads(SourceLocation where) {
  InternalSection internal;
  current_thread->block->WaitAtBlockBarrier(where);
}

void SyncWarp(unsigned mask, SourceLocation where) {
  InternalSection internal;
  current_thread->block->WaitAtWarpBarrier(mask, "__syncwarp", where);
}

uint64_t Shuffle(unsigned mask, uint64_t value, ShuffleMode mode, int arg,
                 int width, SourceLocation where) {
  InternalSection internal;
  return current_thread->block->Shuffle(mask, value, mode, arg, width, where);
}

namespace {

// Worker threads that run blocks of one launch at a time; the launching
// thread works too.
class WorkerPool {
 public:
  WorkerPool() {
    for (int i = 1; i < WorkerCount(); ++i) {
      threads_.emplace_back([this] { Work(); });
    }
  }
  ~WorkerPool() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    wake_.notify_all();
    for (std::thread& t : threads_) t.join();
  }

  void Run(const GridLaunch& launch) {
    std::lock_guard<std::mutex> run_lock(run_mu_);
    const uint64_t total =
        static_cast<uint64_t>(launch.grid.x) * launch.grid.y * launch.grid.z;
    if (threads_.empty() || total == 1) {
      for (uint64_t b = 0; b < total; ++b) RunOne(launch, b);
      return;
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      launch_ = &launch;
      total_ = total;
      next_.store(0);
      busy_ = static_cast<int>(threads_.size());
      ++generation_;
    }
    wake_.notify_all();
    Drain();
    std::unique_lock<std::mutex> lock(mu_);
    done_.wait(lock, [this] { return busy_ == 0; });
    launch_ = nullptr;
  }

 private:
  static void RunOne(const GridLaunch& launch, uint64_t b) {
    const dim3 g = launch.grid;
    const uint3 idx = uint3{static_cast<unsigned>(b % g.x),
                            static_cast<unsigned>(b / g.x % g.y),
                            static_cast<unsigned>(b / g.x / g.y)};
    BlockScheduler::ForThisThread().RunBlock(launch, idx);
  }

  void Drain() {
    for (;;) {
      const uint64_t b = next_.fetch_add(1);
      if (b >= total_) return;
      RunOne(*launch_, b);
    }
  }

  void Work() {
    uint64_t seen = 0;
    for (;;) {
      {
        std::unique_lock<std::mutex> lock(mu_);
        wake_.wait(lock, [&] { return stop_ || generation_ != seen; });
        if (stop_) return;
        seen = generation_;
      }
      Drain();
      {
        std::lock_guard<std::mutex> lock(mu_);
        --busy_;
      }
      done_.notify_one();
    }
  }

  std::vector<std::thread> threads_;
  std::mutex run_mu_;
  std::mutex mu_;
  std::condition_variable wake_, done_;
  bool stop_ = false;
  uint64_t generation_ = 0;
  const GridLaunch* launch_ = nullptr;
  uint64_t total_ = 0;
  std::atomic<uint64_t> next_{0};
  int busy_ = 0;
};

}  // namespace

int WorkerCount() {
  static const int count = static_cast<int>(
      PositiveEnv("PREFOPT_CUDASIM_WORKERS",
                  std::max(1u, std::thread::hardware_concurrency())));
  return count;
}

void Fatal(const std::string& message) {
  std::fprintf(stderr, "cudasim: %s\n", message.c_str());
  std::fflush(stderr);
  std::abort();
}

size_t PositiveEnv(const char* name, size_t fallback) {
  const char* env = std::getenv(name);
  if (env == nullptr) return fallback;
  char* end = nullptr;
  const unsigned long long v = std::strtoull(env, &end, 10);
  if (end == env || *end != '\0' || v == 0) {
    Fatal(std::string(name) + "=" + env + " is not a positive integer");
  }
  return static_cast<size_t>(v);
}

void RunGrid(const GridLaunch& launch) {
  static WorkerPool* pool = new WorkerPool();  // lives until exit
  pool->Run(launch);
}

}  // namespace prefopt::cudasim
