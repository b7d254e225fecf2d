#include "kernels/cuda/sim/runtime.h"

#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "kernels/cuda/sim/device.h"
#include "kernels/cuda/sim/grid_runner.h"

// Opaque handle types of the CUDA runtime, defined by the simulation.
struct CUevent_st;

struct CUstream_st {
  struct Item {
    std::function<void()> work;
    CUevent_st* records = nullptr;  // an event recorded at this point
  };
  std::deque<Item> pending;
};

struct CUevent_st {
  CUstream_st* stream = nullptr;  // where it was last recorded
  uint64_t recorded = 0;          // times recorded
  uint64_t completed = 0;         // times the stream reached the record
};

namespace prefopt::cudasim {
namespace {

// Limits of the device the simulation presents (an sm_90 GPU's).
constexpr int kMaxThreadsPerBlock = 1024;
constexpr int kDefaultSharedBytes = 48 << 10;
constexpr int kOptInSharedBytes = 227 << 10;
constexpr size_t kDeviceAlignment = 256;

// The installed driver's CUDA version (cudaDriverGetVersion), read at every
// call so that a test can change it; one older than the runtime's makes
// cudaGetDeviceCount fail as a real runtime does.
int DriverVersion() {
  return static_cast<int>(
      PositiveEnv("PREFOPT_CUDASIM_DRIVER_VERSION", CUDART_VERSION));
}

// All state of the simulated devices; one lock, since calls are cheap next
// to the work they queue and queued work runs outside it.
class Runtime {
 public:
  static Runtime& Get() {
    static Runtime* runtime = new Runtime();  // lives until exit
    return *runtime;
  }

  std::mutex mu;
  int devices = static_cast<int>(PositiveEnv("PREFOPT_CUDASIM_DEVICES", 1));
  size_t memory_bytes = PositiveEnv(
      "PREFOPT_CUDASIM_MEMORY_BYTES",
      static_cast<size_t>(sysconf(_SC_PHYS_PAGES)) * sysconf(_SC_PAGESIZE));
  size_t used_bytes = 0;
  std::map<uintptr_t, size_t> device_allocations;  // start -> bytes
  // Where each device allocation's pages are (see DeviceAccess).
  struct Mapping {
    void* base;
    size_t data_bytes;   // the pages holding the allocation
    size_t total_bytes;  // plus one guard page
  };
  std::map<uintptr_t, Mapping> device_mappings;  // start -> its pages
  int device_access_depth = 0;
  std::map<uintptr_t, size_t> pinned_allocations;
  std::map<const void*, int> shared_opt_in;  // kernel -> max dynamic bytes
  CUstream_st legacy_stream;
  std::vector<CUstream_st*> streams{&legacy_stream};

  // The allocation in `allocations` containing [p, p + bytes), or end().
  static std::map<uintptr_t, size_t>::const_iterator Find(
      const std::map<uintptr_t, size_t>& allocations, const void* p,
      size_t bytes) {
    const uintptr_t a = reinterpret_cast<uintptr_t>(p);
    auto it = allocations.upper_bound(a);
    if (it == allocations.begin()) return allocations.end();
    --it;
    if (a + bytes > it->first + it->second) return allocations.end();
    return it;
  }
};

thread_local cudaError_t last_error = cudaSuccess;

cudaError_t Fail(cudaError_t err) {
  last_error = err;
  return err;
}

CUstream_st* StreamOf(cudaStream_t s) {
  return s == nullptr ? &Runtime::Get().legacy_stream : s;
}

#if defined(__SANITIZE_ADDRESS__)
// AddressSanitizer watches exact-size heap blocks instead (runtime.h).
constexpr bool kProtectDeviceMemory = false;
#else
constexpr bool kProtectDeviceMemory = true;
#endif

void SetDeviceProtection(Runtime& rt, int prot) {
  for (const auto& [start, m] : rt.device_mappings) {
    mprotect(m.base, m.data_bytes, prot);
  }
}

// Device memory is readable and writable only while the device works on it
// (queued work and synchronous copies run inside a DeviceAccess); the rest of
// the time the host's loads and stores fault, as they would on a GPU,
// instead of silently reading device memory that is host memory here.
class DeviceAccess {
 public:
  DeviceAccess() {
    if (!kProtectDeviceMemory) return;
    Runtime& rt = Runtime::Get();
    std::lock_guard<std::mutex> lock(rt.mu);
    if (rt.device_access_depth++ == 0) {
      SetDeviceProtection(rt, PROT_READ | PROT_WRITE);
    }
  }
  ~DeviceAccess() {
    if (!kProtectDeviceMemory) return;
    Runtime& rt = Runtime::Get();
    std::lock_guard<std::mutex> lock(rt.mu);
    if (--rt.device_access_depth == 0) SetDeviceProtection(rt, PROT_NONE);
  }
  DeviceAccess(const DeviceAccess&) = delete;
  DeviceAccess& operator=(const DeviceAccess&) = delete;
};

struct sigaction previous_segv_action;

// A fault on protected device memory is host code reading or writing device
// memory: say so and abort. Any other fault goes to the previous handler.
void OnSegv(int signal, siginfo_t* info, void* context) {
  Runtime& rt = Runtime::Get();
  const uintptr_t a = reinterpret_cast<uintptr_t>(info->si_addr);
  if (rt.mu.try_lock()) {
    for (const auto& [start, m] : rt.device_mappings) {
      const uintptr_t base = reinterpret_cast<uintptr_t>(m.base);
      if (a < base || a >= base + m.total_bytes) continue;
      const size_t bytes = rt.device_allocations[start];
      char message[320];
      const int n = std::snprintf(
          message, sizeof(message),
          "cudasim: %s at %p, %s the cudaMalloc allocation of %zu bytes at "
          "%p: host code must not touch device memory (use cudaMemcpy); on "
          "a GPU this access crashes or reads garbage\n",
          a >= base + m.data_bytes ? "access past the end of device memory"
                                   : "host access to device memory",
          info->si_addr, a >= start ? "in or after" : "before", bytes,
          reinterpret_cast<void*>(start));
      if (n > 0) {
        (void)!write(STDERR_FILENO, message,
                     std::min<size_t>(n, sizeof(message) - 1));
      }
      std::abort();
    }
    rt.mu.unlock();
  }
  sigaction(SIGSEGV, &previous_segv_action, nullptr);
  (void)signal;
  (void)context;
}

void InstallSegvHandler() {
  static const bool installed = [] {
    struct sigaction action;
    std::memset(&action, 0, sizeof(action));
    action.sa_sigaction = OnSegv;
    action.sa_flags = SA_SIGINFO | SA_ONSTACK;
    sigemptyset(&action.sa_mask);
    sigaction(SIGSEGV, &action, &previous_segv_action);
    return true;
  }();
  (void)installed;
}

// Runs a stream's queued work in order until `until` returns true (or the
// queue is empty). Work runs without the runtime lock.
template <typename Until>
void Drain(CUstream_st* stream, Until until) {
  for (;;) {
    CUstream_st::Item item;
    {
      std::lock_guard<std::mutex> lock(Runtime::Get().mu);
      if (until() || stream->pending.empty()) return;
      item = std::move(stream->pending.front());
      stream->pending.pop_front();
    }
    if (item.work) {
      DeviceAccess access;
      item.work();
    }
    if (item.records != nullptr) {
      std::lock_guard<std::mutex> lock(Runtime::Get().mu);
      ++item.records->completed;
    }
  }
}

void DrainStream(CUstream_st* stream) {
  Drain(stream, [] { return false; });
}

void DrainAll() {
  std::vector<CUstream_st*> streams;
  {
    std::lock_guard<std::mutex> lock(Runtime::Get().mu);
    streams = Runtime::Get().streams;
  }
  for (CUstream_st* s : streams) DrainStream(s);
}

void WaitForEvent(CUevent_st* event) {
  uint64_t target;
  CUstream_st* stream;
  {
    std::lock_guard<std::mutex> lock(Runtime::Get().mu);
    target = event->recorded;
    stream = event->stream;
  }
  if (stream == nullptr) return;
  Drain(stream, [event, target] { return event->completed >= target; });
}

bool IsPinned(const void* p, size_t bytes) {
  Runtime& rt = Runtime::Get();
  std::lock_guard<std::mutex> lock(rt.mu);
  return Runtime::Find(rt.pinned_allocations, p, bytes) !=
         rt.pinned_allocations.end();
}

enum class Side { kHost, kDevice };

// The side of a copy's pointer that `kind` declares, checked against the
// allocations (cudaMemcpyDefault: inferred).
cudaError_t CheckSide(const void* p, size_t bytes, Side declared,
                      const char* call, const char* role) {
  if (declared == Side::kDevice && !IsDeviceRange(p, bytes)) {
    std::fprintf(stderr,
                 "cudasim: %s: %s range %p + %zu bytes is not inside a device "
                 "allocation\n",
                 call, role, p, bytes);
    return Fail(cudaErrorInvalidValue);
  }
  if (declared == Side::kHost && IsDeviceRange(p, 1)) {
    std::fprintf(stderr,
                 "cudasim: %s: %s %p is device memory, kind says host\n", call,
                 role, p);
    return Fail(cudaErrorInvalidValue);
  }
  return cudaSuccess;
}

// The counts CallCounts reports.
struct AtomicCallCounts {
  std::atomic<int64_t> device_to_host_copies{0};
  std::atomic<int64_t> host_to_device_copies{0};
  std::atomic<int64_t> device_allocations{0};
};

AtomicCallCounts& CallCounter() {
  static AtomicCallCounts counts;
  return counts;
}

cudaError_t Copy(void* dst, const void* src, size_t count, cudaMemcpyKind kind,
                 cudaStream_t stream, bool async, const char* call) {
  if (count == 0) return cudaSuccess;
  if (kind == cudaMemcpyDefault) {
    const bool d_dev = IsDeviceRange(dst, count);
    const bool s_dev = IsDeviceRange(src, count);
    kind = d_dev ? (s_dev ? cudaMemcpyDeviceToDevice : cudaMemcpyHostToDevice)
                 : (s_dev ? cudaMemcpyDeviceToHost : cudaMemcpyHostToHost);
  }
  const bool dst_dev =
      kind == cudaMemcpyHostToDevice || kind == cudaMemcpyDeviceToDevice;
  const bool src_dev =
      kind == cudaMemcpyDeviceToHost || kind == cudaMemcpyDeviceToDevice;
  if (cudaError_t e =
          CheckSide(dst, count, dst_dev ? Side::kDevice : Side::kHost, call,
                    "destination");
      e != cudaSuccess) {
    return e;
  }
  if (cudaError_t e = CheckSide(
          src, count, src_dev ? Side::kDevice : Side::kHost, call, "source");
      e != cudaSuccess) {
    return e;
  }
  if (kind == cudaMemcpyDeviceToHost) ++CallCounter().device_to_host_copies;
  if (kind == cudaMemcpyHostToDevice) ++CallCounter().host_to_device_copies;
  CUstream_st* s = StreamOf(stream);
  if (!async) {
    DrainAll();
    DeviceAccess access;
    std::memcpy(dst, src, count);
    return cudaSuccess;
  }
  if (!src_dev && !IsPinned(src, count)) {
    // Pageable source: staged now, so the caller may reuse its buffer.
    auto staged = std::make_shared<std::vector<unsigned char>>(
        static_cast<const unsigned char*>(src),
        static_cast<const unsigned char*>(src) + count);
    Enqueue(
        s, [dst, staged] { std::memcpy(dst, staged->data(), staged->size()); });
  } else {
    Enqueue(s, [dst, src, count] { std::memcpy(dst, src, count); });
  }
  if (!dst_dev && !IsPinned(dst, count)) {
    // Pageable destination: the copy has completed when the call returns.
    DrainStream(s);
  }
  return cudaSuccess;
}

}  // namespace

void Enqueue(cudaStream_t stream, std::function<void()> work) {
  std::lock_guard<std::mutex> lock(Runtime::Get().mu);
  StreamOf(stream)->pending.push_back({std::move(work), nullptr});
}

void SetDeviceMemoryBytes(size_t bytes) {
  Runtime& rt = Runtime::Get();
  std::lock_guard<std::mutex> lock(rt.mu);
  rt.memory_bytes = bytes;
}

size_t DeviceMemoryUsedBytes() {
  Runtime& rt = Runtime::Get();
  std::lock_guard<std::mutex> lock(rt.mu);
  return rt.used_bytes;
}

CallCounts Counts() {
  const AtomicCallCounts& c = CallCounter();
  return {c.device_to_host_copies.load(), c.host_to_device_copies.load(),
          c.device_allocations.load()};
}

bool IsDeviceRange(const void* p, size_t bytes) {
  Runtime& rt = Runtime::Get();
  std::lock_guard<std::mutex> lock(rt.mu);
  return Runtime::Find(rt.device_allocations, p, bytes) !=
         rt.device_allocations.end();
}

void EnqueueKernel(cudaStream_t stream, const void* kernel, GridLaunch launch) {
  const dim3 g = launch.grid, b = launch.block;
  const uint64_t threads = static_cast<uint64_t>(b.x) * b.y * b.z;
  std::string problem;
  if (g.x == 0 || g.y == 0 || g.z == 0 || threads == 0) {
    problem = "an empty grid or block";
  } else if (g.y > 65535 || g.z > 65535 || g.x > 0x7fffffffu) {
    problem = "grid dimensions beyond CUDA's limits (2^31-1, 65535, 65535)";
  } else if (threads > kMaxThreadsPerBlock || b.z > 64) {
    problem = "a block of " + std::to_string(threads) +
              " threads (limit 1024; z limit 64)";
  }
  if (!problem.empty()) {
    std::fprintf(stderr, "cudasim: launch of %s: %s\n", launch.kernel_name,
                 problem.c_str());
    Fail(cudaErrorInvalidConfiguration);
    return;
  }
  int limit = kDefaultSharedBytes;
  {
    Runtime& rt = Runtime::Get();
    std::lock_guard<std::mutex> lock(rt.mu);
    if (auto it = rt.shared_opt_in.find(kernel); it != rt.shared_opt_in.end()) {
      limit = std::max(limit, it->second);
    }
  }
  if (launch.dynamic_shared_bytes > static_cast<size_t>(limit)) {
    std::fprintf(stderr,
                 "cudasim: launch of %s: %zu bytes of dynamic shared memory, "
                 "more than the %d the kernel may use (above 48 KiB needs "
                 "cudaFuncSetAttribute(MaxDynamicSharedMemorySize))\n",
                 launch.kernel_name, launch.dynamic_shared_bytes, limit);
    Fail(cudaErrorInvalidValue);
    return;
  }
  auto shared = std::make_shared<GridLaunch>(std::move(launch));
  Enqueue(stream, [shared] { RunGrid(*shared); });
}

}  // namespace prefopt::cudasim

using prefopt::cudasim::DrainAll;
using prefopt::cudasim::DrainStream;
using prefopt::cudasim::DriverVersion;
using prefopt::cudasim::Fail;
using prefopt::cudasim::Runtime;
using prefopt::cudasim::StreamOf;

extern "C" {

cudaError_t cudaGetLastError() {
  const cudaError_t err = prefopt::cudasim::last_error;
  prefopt::cudasim::last_error = cudaSuccess;
  return err;
}

const char* cudaGetErrorName(cudaError_t error) {
  switch (error) {
    case cudaSuccess:
      return "cudaSuccess";
    case cudaErrorInvalidValue:
      return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation:
      return "cudaErrorMemoryAllocation";
    case cudaErrorInsufficientDriver:
      return "cudaErrorInsufficientDriver";
    case cudaErrorInvalidConfiguration:
      return "cudaErrorInvalidConfiguration";
    case cudaErrorInvalidDevice:
      return "cudaErrorInvalidDevice";
    case cudaErrorInvalidResourceHandle:
      return "cudaErrorInvalidResourceHandle";
    case cudaErrorNotReady:
      return "cudaErrorNotReady";
    default:
      return "cudaErrorUnknown";
  }
}

const char* cudaGetErrorString(cudaError_t error) {
  switch (error) {
    case cudaSuccess:
      return "no error";
    case cudaErrorInvalidValue:
      return "invalid argument";
    case cudaErrorMemoryAllocation:
      return "out of memory";
    case cudaErrorInsufficientDriver:
      return "CUDA driver version is insufficient for CUDA runtime version";
    case cudaErrorInvalidConfiguration:
      return "invalid configuration argument";
    case cudaErrorInvalidDevice:
      return "invalid device ordinal";
    case cudaErrorInvalidResourceHandle:
      return "invalid resource handle";
    case cudaErrorNotReady:
      return "device not ready";
    default:
      return "unknown error";
  }
}

cudaError_t cudaGetDeviceCount(int* count) {
  if (DriverVersion() < CUDART_VERSION) {
    *count = 0;
    return Fail(cudaErrorInsufficientDriver);
  }
  *count = Runtime::Get().devices;
  return cudaSuccess;
}

cudaError_t cudaDriverGetVersion(int* version) {
  *version = DriverVersion();
  return cudaSuccess;
}

cudaError_t cudaRuntimeGetVersion(int* version) {
  *version = CUDART_VERSION;
  return cudaSuccess;
}

cudaError_t cudaSetDevice(int device) {
  if (device < 0 || device >= Runtime::Get().devices) {
    return Fail(cudaErrorInvalidDevice);
  }
  return cudaSuccess;
}

cudaError_t cudaGetDeviceProperties(cudaDeviceProp* prop, int device) {
  if (device < 0 || device >= Runtime::Get().devices) {
    return Fail(cudaErrorInvalidDevice);
  }
  std::memset(prop, 0, sizeof(*prop));
  std::snprintf(prop->name, sizeof(prop->name), "%s",
                prefopt::cudasim::kDeviceName);
  prop->major = 9;
  prop->minor = 0;
  prop->totalGlobalMem = Runtime::Get().memory_bytes;
  prop->sharedMemPerBlock = prefopt::cudasim::kDefaultSharedBytes;
  prop->sharedMemPerBlockOptin = prefopt::cudasim::kOptInSharedBytes;
  prop->warpSize = 32;
  prop->maxThreadsPerBlock = prefopt::cudasim::kMaxThreadsPerBlock;
  prop->maxThreadsDim[0] = prop->maxThreadsDim[1] = 1024;
  prop->maxThreadsDim[2] = 64;
  prop->maxGridSize[0] = 0x7fffffff;
  prop->maxGridSize[1] = prop->maxGridSize[2] = 65535;
  prop->multiProcessorCount = prefopt::cudasim::WorkerCount();
  return cudaSuccess;
}

cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr,
                                   int device) {
  if (device < 0 || device >= Runtime::Get().devices) {
    return Fail(cudaErrorInvalidDevice);
  }
  switch (attr) {
    case cudaDevAttrMaxSharedMemoryPerBlockOptin:
      *value = prefopt::cudasim::kOptInSharedBytes;
      return cudaSuccess;
    case cudaDevAttrMaxSharedMemoryPerBlock:
      *value = prefopt::cudasim::kDefaultSharedBytes;
      return cudaSuccess;
    case cudaDevAttrMultiProcessorCount:
      *value = prefopt::cudasim::WorkerCount();
      return cudaSuccess;
    case cudaDevAttrComputeCapabilityMajor:
      *value = 9;
      return cudaSuccess;
    case cudaDevAttrComputeCapabilityMinor:
      *value = 0;
      return cudaSuccess;
    default:
      std::fprintf(stderr,
                   "cudasim: cudaDeviceGetAttribute(%d) is not simulated\n",
                   static_cast<int>(attr));
      return Fail(cudaErrorInvalidValue);
  }
}

cudaError_t cudaDeviceSynchronize() {
  DrainAll();
  return cudaSuccess;
}

cudaError_t cudaMemGetInfo(size_t* free_bytes, size_t* total_bytes) {
  Runtime& rt = Runtime::Get();
  std::lock_guard<std::mutex> lock(rt.mu);
  *total_bytes = rt.memory_bytes;
  *free_bytes =
      rt.used_bytes > rt.memory_bytes ? 0 : rt.memory_bytes - rt.used_bytes;
  return cudaSuccess;
}

cudaError_t cudaMalloc(void** ptr, size_t size) {
  ++prefopt::cudasim::CallCounter().device_allocations;
  Runtime& rt = Runtime::Get();
  {
    std::lock_guard<std::mutex> lock(rt.mu);
    if (rt.used_bytes > rt.memory_bytes ||
        size > rt.memory_bytes - rt.used_bytes) {
      *ptr = nullptr;
      return Fail(cudaErrorMemoryAllocation);
    }
  }
  void* p = nullptr;
  Runtime::Mapping mapping{nullptr, 0, 0};
  if (!prefopt::cudasim::kProtectDeviceMemory) {
    // Exactly `size` bytes (not rounded up), so AddressSanitizer reports an
    // access one element past the end of a device buffer.
    if (posix_memalign(&p, prefopt::cudasim::kDeviceAlignment,
                       std::max<size_t>(size, 1)) != 0) {
      *ptr = nullptr;
      return Fail(cudaErrorMemoryAllocation);
    }
  } else {
    // Pages of its own, protected outside device work, ending as close to
    // the allocation's end as the 256-byte alignment allows, then a guard
    // page: a kernel reading past the end faults too.
    prefopt::cudasim::InstallSegvHandler();
    const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
    const size_t used =
        (std::max<size_t>(size, 1) + prefopt::cudasim::kDeviceAlignment - 1) /
        prefopt::cudasim::kDeviceAlignment * prefopt::cudasim::kDeviceAlignment;
    mapping.data_bytes = (used + page - 1) / page * page;
    mapping.total_bytes = mapping.data_bytes + page;
    mapping.base = mmap(nullptr, mapping.total_bytes, PROT_NONE,
                        MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (mapping.base == MAP_FAILED) {
      *ptr = nullptr;
      return Fail(cudaErrorMemoryAllocation);
    }
    p = static_cast<char*>(mapping.base) + mapping.data_bytes - used;
  }
  std::lock_guard<std::mutex> lock(rt.mu);
  rt.device_allocations[reinterpret_cast<uintptr_t>(p)] = size;
  if (mapping.base != nullptr) {
    rt.device_mappings[reinterpret_cast<uintptr_t>(p)] = mapping;
    if (rt.device_access_depth > 0) {
      mprotect(mapping.base, mapping.data_bytes, PROT_READ | PROT_WRITE);
    }
  }
  rt.used_bytes += size;
  *ptr = p;
  return cudaSuccess;
}

cudaError_t cudaFree(void* ptr) {
  if (ptr == nullptr) return cudaSuccess;
  // cudaFree waits for the device, as work in flight may use the memory.
  DrainAll();
  Runtime& rt = Runtime::Get();
  {
    std::lock_guard<std::mutex> lock(rt.mu);
    auto it = rt.device_allocations.find(reinterpret_cast<uintptr_t>(ptr));
    if (it == rt.device_allocations.end()) {
      std::fprintf(stderr,
                   "cudasim: cudaFree(%p): not the start of a device "
                   "allocation\n",
                   ptr);
      return Fail(cudaErrorInvalidValue);
    }
    rt.used_bytes -= it->second;
    rt.device_allocations.erase(it);
    auto m = rt.device_mappings.find(reinterpret_cast<uintptr_t>(ptr));
    if (m != rt.device_mappings.end()) {
      munmap(m->second.base, m->second.total_bytes);
      rt.device_mappings.erase(m);
      return cudaSuccess;
    }
  }
  std::free(ptr);
  return cudaSuccess;
}

cudaError_t cudaMallocHost(void** ptr, size_t size) {
  void* p = nullptr;
  if (posix_memalign(&p, 4096, std::max<size_t>(size, 1)) != 0) {
    *ptr = nullptr;
    return Fail(cudaErrorMemoryAllocation);
  }
  Runtime& rt = Runtime::Get();
  std::lock_guard<std::mutex> lock(rt.mu);
  rt.pinned_allocations[reinterpret_cast<uintptr_t>(p)] = size;
  *ptr = p;
  return cudaSuccess;
}

cudaError_t cudaFreeHost(void* ptr) {
  if (ptr == nullptr) return cudaSuccess;
  DrainAll();
  Runtime& rt = Runtime::Get();
  {
    std::lock_guard<std::mutex> lock(rt.mu);
    if (rt.pinned_allocations.erase(reinterpret_cast<uintptr_t>(ptr)) == 0) {
      std::fprintf(stderr,
                   "cudasim: cudaFreeHost(%p): not a cudaMallocHost "
                   "allocation\n",
                   ptr);
      return Fail(cudaErrorInvalidValue);
    }
  }
  std::free(ptr);
  return cudaSuccess;
}

cudaError_t cudaPointerGetAttributes(cudaPointerAttributes* attributes,
                                     const void* ptr) {
  std::memset(attributes, 0, sizeof(*attributes));
  Runtime& rt = Runtime::Get();
  std::lock_guard<std::mutex> lock(rt.mu);
  if (Runtime::Find(rt.device_allocations, ptr, 1) !=
      rt.device_allocations.end()) {
    attributes->type = cudaMemoryTypeDevice;
    attributes->devicePointer = const_cast<void*>(ptr);
  } else if (Runtime::Find(rt.pinned_allocations, ptr, 1) !=
             rt.pinned_allocations.end()) {
    attributes->type = cudaMemoryTypeHost;
    attributes->hostPointer = const_cast<void*>(ptr);
    attributes->devicePointer = const_cast<void*>(ptr);
  } else {
    attributes->type = cudaMemoryTypeUnregistered;
    attributes->device = -2;
  }
  return cudaSuccess;
}

cudaError_t cudaMemcpy(void* dst, const void* src, size_t count,
                       cudaMemcpyKind kind) {
  return prefopt::cudasim::Copy(dst, src, count, kind, nullptr, false,
                                "cudaMemcpy");
}

cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t count,
                            cudaMemcpyKind kind, cudaStream_t stream) {
  return prefopt::cudasim::Copy(dst, src, count, kind, stream, true,
                                "cudaMemcpyAsync");
}

cudaError_t cudaMemsetAsync(void* ptr, int value, size_t count,
                            cudaStream_t stream) {
  if (count == 0) return cudaSuccess;
  if (!prefopt::cudasim::IsDeviceRange(ptr, count)) {
    std::fprintf(stderr,
                 "cudasim: cudaMemsetAsync: %p + %zu bytes is not inside a "
                 "device allocation\n",
                 ptr, count);
    return Fail(cudaErrorInvalidValue);
  }
  prefopt::cudasim::Enqueue(
      stream, [ptr, value, count] { std::memset(ptr, value, count); });
  return cudaSuccess;
}

cudaError_t cudaMemset(void* ptr, int value, size_t count) {
  const cudaError_t err = cudaMemsetAsync(ptr, value, count, nullptr);
  DrainAll();
  return err;
}

cudaError_t cudaStreamCreateWithFlags(cudaStream_t* stream,
                                      unsigned int /*flags*/) {
  auto* s = new CUstream_st();
  Runtime& rt = Runtime::Get();
  std::lock_guard<std::mutex> lock(rt.mu);
  rt.streams.push_back(s);
  *stream = s;
  return cudaSuccess;
}

cudaError_t cudaStreamDestroy(cudaStream_t stream) {
  if (stream == nullptr) return Fail(cudaErrorInvalidResourceHandle);
  // Queued work still completes, as on the GPU.
  DrainStream(stream);
  Runtime& rt = Runtime::Get();
  {
    std::lock_guard<std::mutex> lock(rt.mu);
    auto it = std::find(rt.streams.begin(), rt.streams.end(), stream);
    if (it == rt.streams.end()) return Fail(cudaErrorInvalidResourceHandle);
    rt.streams.erase(it);
  }
  delete stream;
  return cudaSuccess;
}

cudaError_t cudaStreamSynchronize(cudaStream_t stream) {
  DrainStream(StreamOf(stream));
  return cudaSuccess;
}

// Like cudaEventQuery, it reports and does not run work: queued work runs
// when the host synchronizes.
cudaError_t cudaStreamQuery(cudaStream_t stream) {
  std::lock_guard<std::mutex> lock(Runtime::Get().mu);
  return StreamOf(stream)->pending.empty() ? cudaSuccess : cudaErrorNotReady;
}

cudaError_t cudaEventCreateWithFlags(cudaEvent_t* event,
                                     unsigned int /*flags*/) {
  *event = new CUevent_st();
  return cudaSuccess;
}

cudaError_t cudaEventCreate(cudaEvent_t* event) {
  return cudaEventCreateWithFlags(event, cudaEventDefault);
}

cudaError_t cudaEventDestroy(cudaEvent_t event) {
  if (event == nullptr) return Fail(cudaErrorInvalidResourceHandle);
  // A recorded event the stream has not reached yet is still referenced by
  // the queue: let it complete first.
  prefopt::cudasim::WaitForEvent(event);
  delete event;
  return cudaSuccess;
}

cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t stream) {
  if (event == nullptr) return Fail(cudaErrorInvalidResourceHandle);
  CUstream_st* s = StreamOf(stream);
  Runtime& rt = Runtime::Get();
  std::lock_guard<std::mutex> lock(rt.mu);
  event->stream = s;
  ++event->recorded;
  s->pending.push_back({nullptr, event});
  return cudaSuccess;
}

cudaError_t cudaEventSynchronize(cudaEvent_t event) {
  if (event == nullptr) return Fail(cudaErrorInvalidResourceHandle);
  prefopt::cudasim::WaitForEvent(event);
  return cudaSuccess;
}

cudaError_t cudaEventQuery(cudaEvent_t event) {
  if (event == nullptr) return Fail(cudaErrorInvalidResourceHandle);
  std::lock_guard<std::mutex> lock(Runtime::Get().mu);
  return event->completed >= event->recorded ? cudaSuccess : cudaErrorNotReady;
}

cudaError_t cudaStreamWaitEvent(cudaStream_t stream, cudaEvent_t event,
                                unsigned int /*flags*/) {
  if (event == nullptr) return Fail(cudaErrorInvalidResourceHandle);
  uint64_t target;
  {
    std::lock_guard<std::mutex> lock(Runtime::Get().mu);
    target = event->recorded;
  }
  // Later work on `stream` starts after the event's stream has reached it.
  prefopt::cudasim::Enqueue(stream, [event, target] {
    CUstream_st* source;
    {
      std::lock_guard<std::mutex> lock(Runtime::Get().mu);
      source = event->stream;
    }
    prefopt::cudasim::Drain(
        source, [event, target] { return event->completed >= target; });
  });
  return cudaSuccess;
}

cudaError_t cudaFuncSetAttribute(const void* func, cudaFuncAttribute attr,
                                 int value) {
  if (attr != cudaFuncAttributeMaxDynamicSharedMemorySize) {
    return cudaSuccess;  // preferences only (carveout, cluster hints)
  }
  if (value < 0 || value > prefopt::cudasim::kOptInSharedBytes) {
    std::fprintf(stderr,
                 "cudasim: cudaFuncSetAttribute(MaxDynamicSharedMemorySize, "
                 "%d): the device allows at most %d\n",
                 value, prefopt::cudasim::kOptInSharedBytes);
    return Fail(cudaErrorInvalidValue);
  }
  Runtime& rt = Runtime::Get();
  std::lock_guard<std::mutex> lock(rt.mu);
  rt.shared_opt_in[func] = value;
  return cudaSuccess;
}

}  // extern "C"
