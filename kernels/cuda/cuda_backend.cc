// Host side of CudaBackend: device setup, memory, uploads of the interface's
// host arrays, cuBLASLt GEMMs, and the op-by-op orchestration of the kernels
// of cuda_kernels.h.
#include "kernels/cuda/cuda_backend.h"

#include <cublasLt.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <numeric>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "kernels/cuda/cuda_kernels.h"
#include "kernels/memory_purpose.h"

namespace prefopt::kernels {
namespace {

[[noreturn]] void Fatal(const std::string& message) {
  std::fprintf(stderr, "CudaBackend: %s\n", message.c_str());
  std::abort();
}

void CheckCall(cudaError_t err, const char* call, const char* file, int line) {
  if (err != cudaSuccess) {
    Fatal(absl::StrCat(file, ":", line, ": ", call,
                       " failed: ", cudaGetErrorString(err)));
  }
}

void CheckCall(cublasStatus_t status, const char* call, const char* file,
               int line) {
  if (status != CUBLAS_STATUS_SUCCESS) {
    Fatal(absl::StrCat(file, ":", line, ": ", call,
                       " failed: ", cublasLtGetStatusString(status)));
  }
}

// Aborts with the failing call and its error string.
#define PREFOPT_CHECK_CUDA(call) CheckCall((call), #call, __FILE__, __LINE__)

absl::Status StatusOf(cudaError_t err, const char* call) {
  if (err == cudaSuccess) return absl::OkStatus();
  return absl::InternalError(
      absl::StrCat(call, " failed: ", cudaGetErrorString(err)));
}

// "1234.5 MiB".
std::string Mib(size_t bytes) {
  char text[32];
  std::snprintf(text, sizeof(text), "%.1f MiB", bytes / 1048576.0);
  return text;
}

// Device memory this process holds through DeviceAlloc, now and at most.
std::mutex& AllocationMutex() {
  static std::mutex* mu = new std::mutex();
  return *mu;
}
std::map<const void*, size_t>& LiveAllocations() {
  static auto* live = new std::map<const void*, size_t>();
  return *live;
}
CudaBackend::MemoryStats& Stats() {
  static auto* stats = new CudaBackend::MemoryStats();
  return *stats;
}

// cudaMalloc of `bytes` for `buffer` (what it holds, within the caller's
// kernels::MemoryPurpose scopes). Out of memory ends the process with exit
// status 1 and a message naming the buffer, the size and the free memory:
// inside an op there is no status to return, and a run that cannot allocate
// cannot continue (checkpoints are written atomically, so the last complete
// one stays; an mpirun or srun job ends all ranks when one exits non-zero).
void* DeviceAlloc(size_t bytes, const std::string& buffer) {
  void* p = nullptr;
  const cudaError_t err = cudaMalloc(&p, std::max<size_t>(bytes, 4));
  if (err != cudaSuccess) {
    size_t free_bytes = 0, total_bytes = 0;
    cudaMemGetInfo(&free_bytes, &total_bytes);
    std::string purpose = MemoryPurpose::Describe();
    if (!buffer.empty()) {
      purpose = purpose.empty() ? buffer : absl::StrCat(purpose, ": ", buffer);
    }
    std::fprintf(
        stderr,
        "CudaBackend: out of GPU memory: cudaMalloc of %s (%zu bytes) for %s "
        "failed (%s); %s free of %s, %s held by prefopt. Use a GPU with "
        "more free memory, lower batch.micro_batch_size or data.max_length, "
        "or set activation_checkpointing: true\n",
        Mib(bytes).c_str(), bytes,
        purpose.empty() ? "an unnamed buffer" : purpose.c_str(),
        cudaGetErrorString(err), Mib(free_bytes).c_str(),
        Mib(total_bytes).c_str(), Mib(Stats().allocated_bytes).c_str());
    std::fflush(stderr);
    std::_Exit(1);
  }
  std::lock_guard<std::mutex> lock(AllocationMutex());
  LiveAllocations()[p] = bytes;
  CudaBackend::MemoryStats& stats = Stats();
  stats.allocated_bytes += bytes;
  stats.peak_allocated_bytes =
      std::max(stats.peak_allocated_bytes, stats.allocated_bytes);
  ++stats.allocations;
  return p;
}

void DeviceFree(void* p) {
  if (p == nullptr) return;
  PREFOPT_CHECK_CUDA(cudaFree(p));
  std::lock_guard<std::mutex> lock(AllocationMutex());
  auto it = LiveAllocations().find(p);
  if (it != LiveAllocations().end()) {
    Stats().allocated_bytes -= it->second;
    LiveAllocations().erase(it);
  }
}

// A device buffer that grows to the largest size asked of it and is reused.
// Growing frees the old buffer; cudaFree waits for the device, so no kernel
// still in flight can be using it.
class Scratch {
 public:
  // `name` says what the buffer holds, for out-of-memory errors.
  explicit Scratch(const char* name) : name_(name) {}
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  ~Scratch() { DeviceFree(ptr_); }

  template <typename T>
  T* Get(size_t count) {
    const size_t bytes = count * sizeof(T);
    if (bytes > bytes_) {
      DeviceFree(ptr_);
      ptr_ = nullptr;
      // Round up to 2 MiB so that slowly growing sizes do not reallocate
      // every call.
      bytes_ = (bytes + (size_t{2} << 20) - 1) & ~((size_t{2} << 20) - 1);
      ptr_ = DeviceAlloc(bytes_,
                         absl::StrCat("CUDA backend scratch (", name_, ")"));
    }
    return static_cast<T*>(ptr_);
  }

 private:
  const char* const name_;
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

// Uploads host index arrays without waiting for the GPU: the data is copied
// into one of a ring of page-locked buffers and sent with an asynchronous
// copy. A buffer is reused only after its previous copy finished (an event),
// which waits only when the GPU is a whole ring of uploads behind.
class HostStaging {
 public:
  HostStaging() = default;
  HostStaging(const HostStaging&) = delete;
  HostStaging& operator=(const HostStaging&) = delete;
  ~HostStaging() {
    for (Slot& s : slots_) {
      if (s.done != nullptr) cudaEventSynchronize(s.done);
      cudaFreeHost(s.host);
      if (s.done != nullptr) cudaEventDestroy(s.done);
    }
  }

  void Upload(int32_t* dst, const int32_t* src, size_t n, cudaStream_t stream) {
    if (n == 0) return;
    Slot& s = slots_[next_];
    next_ = (next_ + 1) % slots_.size();
    if (s.done == nullptr) {
      PREFOPT_CHECK_CUDA(
          cudaEventCreateWithFlags(&s.done, cudaEventDisableTiming));
    } else {
      PREFOPT_CHECK_CUDA(cudaEventSynchronize(s.done));
    }
    if (s.capacity < n) {
      PREFOPT_CHECK_CUDA(cudaFreeHost(s.host));
      s.host = nullptr;
      PREFOPT_CHECK_CUDA(cudaMallocHost(reinterpret_cast<void**>(&s.host),
                                        n * sizeof(int32_t)));
      s.capacity = n;
    }
    std::memcpy(s.host, src, n * sizeof(int32_t));
    PREFOPT_CHECK_CUDA(cudaMemcpyAsync(dst, s.host, n * sizeof(int32_t),
                                       cudaMemcpyHostToDevice, stream));
    PREFOPT_CHECK_CUDA(cudaEventRecord(s.done, stream));
  }

 private:
  struct Slot {
    int32_t* host = nullptr;
    size_t capacity = 0;
    cudaEvent_t done = nullptr;
  };
  std::array<Slot, 32> slots_;
  size_t next_ = 0;
};

// The device copy of the host int32 array last uploaded through it. A
// batch's attention tiles, positions and labels are the same for every layer
// and for the backward pass, so each goes up once per batch instead of once
// per op: the host keeps what it sent and compares the next array with it (a
// few KB) before sending it again.
class UploadCache {
 public:
  explicit UploadCache(const char* name) : buffer_(name) {}

  const int32_t* Get(HostStaging& staging, cudaStream_t stream,
                     const int32_t* src, size_t n) {
    // Scratch::Get(n) keeps the buffer for the same n, so an equal array is
    // still there: every write to it is on `stream`, before the reads.
    int32_t* dst = buffer_.Get<int32_t>(n);
    if (n == sent_.size() && std::equal(src, src + n, sent_.begin())) {
      return dst;
    }
    staging.Upload(dst, src, n, stream);
    sent_.assign(src, src + n);
    return dst;
  }

 private:
  Scratch buffer_;
  std::vector<int32_t> sent_;
};

// The largest power of two (up to 256) dividing the address and the leading
// dimension's byte stride: what cuBLASLt may assume about every column.
uint32_t Alignment(const void* p, size_t ld_bytes) {
  const uintptr_t bits = reinterpret_cast<uintptr_t>(p) | ld_bytes;
  uint32_t align = 256;
  while (align > 1 && bits % align != 0) align /= 2;
  return align;
}

// One column-major GEMM: D = alpha * op(A) op(B) + beta * D (+ bias[m] per
// row of D), D fp32, A and B both fp32 or both bf16.
struct GemmCall {
  bool trans_a = false, trans_b = false;
  int m = 0, n = 0, k = 0;
  const void* a = nullptr;
  int lda = 0;
  const void* b = nullptr;
  int ldb = 0;
  float* d = nullptr;
  int ldd = 0;
  float beta = 0.0f;
  const float* bias = nullptr;
  bool bf16 = false;
};

struct GemmKey {
  bool trans_a, trans_b, bf16, bias;
  int m, n, k, lda, ldb, ldd;
  uint32_t align_a, align_b, align_d, align_bias;

  auto Tie() const {
    return std::tie(trans_a, trans_b, bf16, bias, m, n, k, lda, ldb, ldd,
                    align_a, align_b, align_d, align_bias);
  }
  bool operator<(const GemmKey& o) const { return Tie() < o.Tie(); }
};

struct GemmPlan {
  bool fused_bias = false;  // bias in the epilogue, else a separate kernel
  cublasLtMatmulAlgo_t algo{};
};

// The cuBLASLt descriptors of one call, destroyed with it.
class LtDescriptors {
 public:
  explicit LtDescriptors(const GemmCall& g, bool fused_bias) {
    const cudaDataType_t ab = g.bf16 ? CUDA_R_16BF : CUDA_R_32F;
    PREFOPT_CHECK_CUDA(
        cublasLtMatmulDescCreate(&op_, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    const int32_t ta = g.trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
    const int32_t tb = g.trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
    PREFOPT_CHECK_CUDA(cublasLtMatmulDescSetAttribute(
        op_, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta)));
    PREFOPT_CHECK_CUDA(cublasLtMatmulDescSetAttribute(
        op_, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb)));
    if (fused_bias) {
      const uint32_t epilogue = CUBLASLT_EPILOGUE_BIAS;
      PREFOPT_CHECK_CUDA(cublasLtMatmulDescSetAttribute(
          op_, CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue, sizeof(epilogue)));
      PREFOPT_CHECK_CUDA(cublasLtMatmulDescSetAttribute(
          op_, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &g.bias, sizeof(g.bias)));
      const int32_t bias_type = CUDA_R_32F;
      PREFOPT_CHECK_CUDA(cublasLtMatmulDescSetAttribute(
          op_, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bias_type,
          sizeof(bias_type)));
    }
    PREFOPT_CHECK_CUDA(cublasLtMatrixLayoutCreate(
        &a_, ab, g.trans_a ? g.k : g.m, g.trans_a ? g.m : g.k, g.lda));
    PREFOPT_CHECK_CUDA(cublasLtMatrixLayoutCreate(
        &b_, ab, g.trans_b ? g.n : g.k, g.trans_b ? g.k : g.n, g.ldb));
    PREFOPT_CHECK_CUDA(
        cublasLtMatrixLayoutCreate(&d_, CUDA_R_32F, g.m, g.n, g.ldd));
  }
  ~LtDescriptors() {
    cublasLtMatrixLayoutDestroy(d_);
    cublasLtMatrixLayoutDestroy(b_);
    cublasLtMatrixLayoutDestroy(a_);
    cublasLtMatmulDescDestroy(op_);
  }
  LtDescriptors(const LtDescriptors&) = delete;
  LtDescriptors& operator=(const LtDescriptors&) = delete;

  cublasLtMatmulDesc_t op() const { return op_; }
  cublasLtMatrixLayout_t a() const { return a_; }
  cublasLtMatrixLayout_t b() const { return b_; }
  cublasLtMatrixLayout_t d() const { return d_; }

 private:
  cublasLtMatmulDesc_t op_ = nullptr;
  cublasLtMatrixLayout_t a_ = nullptr, b_ = nullptr, d_ = nullptr;
};

constexpr size_t kLtWorkspaceBytes = size_t{32} << 20;  // cuBLAS's Hopper size

// Attention tiles of every sequence: the query-tile list for the forward and
// dQ kernels (longest causal walk first) followed by the key-tile list for
// the dK/dV kernel (likewise), as int32 quadruples for the upload.
std::vector<int32_t> AttentionTiles(const SeqSpan* spans, int num_seqs, int hs,
                                    int* num_tiles) {
  const int rows = cuda::AttentionTileRows(hs);
  std::vector<cuda::AttentionTile> tiles;
  for (int s = 0; s < num_seqs; ++s) {
    for (int t = 0; t < spans[s].len; t += rows) {
      tiles.push_back({spans[s].start, spans[s].len, t, 0});
    }
  }
  *num_tiles = static_cast<int>(tiles.size());
  auto q_work = [rows](const cuda::AttentionTile& t) {
    return t.tile_start / rows + 1;
  };
  auto k_work = [rows](const cuda::AttentionTile& t) {
    return (t.seq_len + rows - 1) / rows - t.tile_start / rows;
  };
  std::vector<cuda::AttentionTile> q_tiles = tiles, k_tiles = tiles;
  std::stable_sort(
      q_tiles.begin(), q_tiles.end(),
      [&](const auto& a, const auto& b) { return q_work(a) > q_work(b); });
  std::stable_sort(
      k_tiles.begin(), k_tiles.end(),
      [&](const auto& a, const auto& b) { return k_work(a) > k_work(b); });
  std::vector<int32_t> packed;
  packed.reserve(8 * tiles.size());
  for (const auto* list : {&q_tiles, &k_tiles}) {
    for (const cuda::AttentionTile& t : *list) {
      packed.insert(packed.end(),
                    {t.seq_start, t.seq_len, t.tile_start, t.reserved});
    }
  }
  return packed;
}

// Appends the buckets of rows by key (see cuda::BucketAccumulate): rows sorted
// by key (stably, so ascending within a key), the distinct keys, and each
// bucket's first index into the rows, plus an end marker. Returns the number
// of buckets.
int AppendBuckets(const int32_t* keys, int N, std::vector<int32_t>* packed,
                  size_t* rows_at, size_t* keys_at, size_t* begin_at) {
  std::vector<int32_t> order(N);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [keys](int32_t a, int32_t b) { return keys[a] < keys[b]; });
  std::vector<int32_t> bucket_keys, begin;
  for (int i = 0; i < N; ++i) {
    if (i == 0 || keys[order[i]] != keys[order[i - 1]]) {
      bucket_keys.push_back(keys[order[i]]);
      begin.push_back(i);
    }
  }
  begin.push_back(N);
  *rows_at = packed->size();
  packed->insert(packed->end(), order.begin(), order.end());
  *keys_at = packed->size();
  packed->insert(packed->end(), bucket_keys.begin(), bucket_keys.end());
  *begin_at = packed->size();
  packed->insert(packed->end(), begin.begin(), begin.end());
  return static_cast<int>(bucket_keys.size());
}

}  // namespace

struct CudaBackend::State {
  State() = default;
  State(const State&) = delete;
  State& operator=(const State&) = delete;
  ~State() {
    if (stream != nullptr) cudaStreamSynchronize(stream);
    cudaFree(lt_workspace);
    cudaFreeHost(host_result);
    if (lt != nullptr) cublasLtDestroy(lt);
    if (stream != nullptr) cudaStreamDestroy(stream);
  }

  // Rounds n floats to bf16 into `slot` and returns the copy.
  const void* ToBf16(Scratch& slot, const float* src, size_t n) {
    uint16_t* dst = slot.Get<uint16_t>(n);
    PREFOPT_CHECK_CUDA(cuda::ToBf16(stream, dst, src, n));
    return dst;
  }

  // Uploads a host int32 array into `slot`.
  int32_t* Upload(Scratch& slot, const int32_t* src, size_t n) {
    int32_t* dst = slot.Get<int32_t>(n);
    staging.Upload(dst, src, n, stream);
    return dst;
  }
  // The device copy of a host int32 array through `cache`.
  const int32_t* Upload(UploadCache& cache, const int32_t* src, size_t n) {
    return cache.Get(staging, stream, src, n);
  }

  void Gemm(const GemmCall& g);
  // The input and weight gradients of out (N x OC) = inp (N x C) weight^T
  // (row-major), in column-major views: dinp (C x N) += weight (C x OC) dout
  // (OC x N) and dweight (C x OC) += inp (C x N) dout^T, dout with leading
  // dimension ldo; operands fp32, or bf16 when `bf16`. Null outputs are
  // skipped.
  void LinearGrads(float* dinp, float* dweight, const void* weight,
                   const void* inp, const void* dout, int ldo, int N, int C,
                   int OC, bool bf16);

  Precision precision = Precision::kFp32;
  std::string device_name;
  int max_smem_per_block = 0;
  cudaStream_t stream = nullptr;
  cublasLtHandle_t lt = nullptr;
  void* lt_workspace = nullptr;
  double* host_result = nullptr;  // page-locked, for SumSquares
  // bf16 operand copies: up to three per GEMM op, four for SparsePO's two
  // output layers.
  Scratch bf16_a{"bf16 GEMM operand A"}, bf16_b{"bf16 GEMM operand B"},
      bf16_c{"bf16 GEMM operand C"}, bf16_d{"bf16 GEMM operand D"};
  Scratch indices{"uploaded indices"};
  UploadCache attention_tiles{"attention tiles"}, positions{"positions"},
      labels{"labels"};
  // Column partials, attention's D, decoding scores.
  Scratch floats{"partial sums"};
  Scratch doubles{"SumSquares partials"};
  // ObjectiveCoefficients' uploaded reference, spans and per-token
  // reference log-probs, and its per-sequence sums and row scales.
  Scratch objective_in{"objective inputs"},
      objective_work{"objective per-sequence sums"};
  // SparsePO's mask-network statistics, MaPO's per-row sums and the
  // per-pair metric values.
  Scratch sparsepo_work{"SparsePO mask and pair sums"};
  HostStaging staging;
  std::vector<int32_t> objective_upload;  // reused host packing buffer
  std::map<GemmKey, GemmPlan> plans;
};

void CudaBackend::State::LinearGrads(float* dinp, float* dweight,
                                     const void* weight, const void* inp,
                                     const void* dout, int ldo, int N, int C,
                                     int OC, bool bf16) {
  if (dinp != nullptr) {
    GemmCall g;
    g.m = C;
    g.n = N;
    g.k = OC;
    g.a = weight;
    g.lda = C;
    g.b = dout;
    g.ldb = ldo;
    g.d = dinp;
    g.ldd = C;
    g.beta = 1.0f;
    g.bf16 = bf16;
    Gemm(g);
  }
  if (dweight != nullptr) {
    GemmCall g;
    g.trans_b = true;
    g.m = C;
    g.n = OC;
    g.k = N;
    g.a = inp;
    g.lda = C;
    g.b = dout;
    g.ldb = ldo;
    g.d = dweight;
    g.ldd = C;
    g.beta = 1.0f;
    g.bf16 = bf16;
    Gemm(g);
  }
}

void CudaBackend::State::Gemm(const GemmCall& g) {
  if (g.m == 0 || g.n == 0 || g.k == 0) return;
  const size_t elem = g.bf16 ? 2 : 4;
  const GemmKey key{g.trans_a,
                    g.trans_b,
                    g.bf16,
                    g.bias != nullptr,
                    g.m,
                    g.n,
                    g.k,
                    g.lda,
                    g.ldb,
                    g.ldd,
                    Alignment(g.a, g.lda * elem),
                    Alignment(g.b, g.ldb * elem),
                    Alignment(g.d, g.ldd * sizeof(float)),
                    Alignment(g.bias, 0)};
  auto it = plans.find(key);
  if (it == plans.end()) {
    cublasLtMatmulPreference_t pref = nullptr;
    PREFOPT_CHECK_CUDA(cublasLtMatmulPreferenceCreate(&pref));
    const uint64_t workspace = kLtWorkspaceBytes;
    PREFOPT_CHECK_CUDA(cublasLtMatmulPreferenceSetAttribute(
        pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &workspace,
        sizeof(workspace)));
    const std::pair<cublasLtMatmulPreferenceAttributes_t, uint32_t> aligns[] = {
        {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, key.align_a},
        {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, key.align_b},
        {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, key.align_d},
        {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, key.align_d}};
    for (const auto& [attr, value] : aligns) {
      PREFOPT_CHECK_CUDA(cublasLtMatmulPreferenceSetAttribute(
          pref, attr, &value, sizeof(value)));
    }
    GemmPlan plan;
    bool found = false;
    // The bias epilogue first; not every type and alignment combination has
    // one, and then the bias is added by a kernel.
    for (const bool fused : {true, false}) {
      if (fused && g.bias == nullptr) continue;
      LtDescriptors desc(g, fused);
      cublasLtMatmulHeuristicResult_t result{};
      int count = 0;
      const cublasStatus_t status = cublasLtMatmulAlgoGetHeuristic(
          lt, desc.op(), desc.a(), desc.b(), desc.d(), desc.d(), pref, 1,
          &result, &count);
      if (status == CUBLAS_STATUS_SUCCESS && count > 0 &&
          result.state == CUBLAS_STATUS_SUCCESS) {
        plan.fused_bias = fused;
        plan.algo = result.algo;
        found = true;
        break;
      }
    }
    cublasLtMatmulPreferenceDestroy(pref);
    if (!found) {
      Fatal(absl::StrCat("cuBLASLt has no algorithm for ",
                         g.bf16 ? "bf16" : "fp32", " GEMM m=", g.m, " n=", g.n,
                         " k=", g.k, " trans_a=", g.trans_a,
                         " trans_b=", g.trans_b, " lda=", g.lda, " ldb=", g.ldb,
                         " ldd=", g.ldd));
    }
    it = plans.emplace(key, plan).first;
  }
  const GemmPlan& plan = it->second;
  LtDescriptors desc(g, plan.fused_bias);
  const float alpha = 1.0f;
  PREFOPT_CHECK_CUDA(cublasLtMatmul(lt, desc.op(), &alpha, g.a, desc.a(), g.b,
                                    desc.b(), &g.beta, g.d, desc.d(), g.d,
                                    desc.d(), &plan.algo, lt_workspace,
                                    kLtWorkspaceBytes, stream));
  if (g.bias != nullptr && !plan.fused_bias) {
    PREFOPT_CHECK_CUDA(cuda::AddBias(stream, g.d, g.bias, g.n, g.m));
  }
}

absl::StatusOr<std::unique_ptr<CudaBackend>> CudaBackend::Create(
    int device, Precision precision) {
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err == cudaErrorInsufficientDriver) {
    int driver = 0, runtime = 0;
    cudaDriverGetVersion(&driver);
    cudaRuntimeGetVersion(&runtime);
    auto version = [](int v) {
      return absl::StrCat(v / 1000, ".", v % 1000 / 10);
    };
    return absl::UnavailableError(
        driver == 0
            ? absl::StrCat("no NVIDIA driver is installed (this prefopt was "
                           "built with the CUDA ",
                           version(runtime), " runtime)")
            : absl::StrCat("the NVIDIA driver supports CUDA up to ",
                           version(driver),
                           ", older than the CUDA runtime this prefopt was "
                           "built with (",
                           version(runtime),
                           "): update the driver, or build with a CUDA "
                           "toolkit no newer than ",
                           version(driver)));
  }
  if (err != cudaSuccess) {
    return absl::UnavailableError(
        absl::StrCat("no usable CUDA device: cudaGetDeviceCount failed: ",
                     cudaGetErrorString(err)));
  }
  if (count == 0) return absl::UnavailableError("no CUDA device found");
  if (device < 0 || device >= count) {
    return absl::OutOfRangeError(absl::StrCat("CUDA device ", device,
                                              " requested; this machine has ",
                                              count, " (numbered from 0)"));
  }
  cudaDeviceProp prop;
  if (absl::Status s = StatusOf(cudaGetDeviceProperties(&prop, device),
                                "cudaGetDeviceProperties");
      !s.ok()) {
    return s;
  }
  if (prop.major < 8) {
    return absl::FailedPreconditionError(absl::StrCat(
        "CUDA device ", device, " (", prop.name, ") has compute capability ",
        prop.major, ".", prop.minor,
        "; the CUDA backend needs 8.0 or newer (bf16 tensor cores)"));
  }
  auto state = std::make_unique<State>();
  state->precision = precision;
  state->device_name = prop.name;
  if (absl::Status s = StatusOf(cudaSetDevice(device), "cudaSetDevice");
      !s.ok()) {
    return s;
  }
  if (absl::Status s =
          StatusOf(cudaDeviceGetAttribute(
                       &state->max_smem_per_block,
                       cudaDevAttrMaxSharedMemoryPerBlockOptin, device),
                   "cudaDeviceGetAttribute(MaxSharedMemoryPerBlockOptin)");
      !s.ok()) {
    return s;
  }
  if (absl::Status s = StatusOf(
          cudaStreamCreateWithFlags(&state->stream, cudaStreamNonBlocking),
          "cudaStreamCreateWithFlags");
      !s.ok()) {
    return s;
  }
  if (const cublasStatus_t st = cublasLtCreate(&state->lt);
      st != CUBLAS_STATUS_SUCCESS) {
    state->lt = nullptr;
    return absl::InternalError(
        absl::StrCat("cublasLtCreate failed: ", cublasLtGetStatusString(st)));
  }
  if (absl::Status s =
          StatusOf(cudaMalloc(&state->lt_workspace, kLtWorkspaceBytes),
                   "cudaMalloc(cuBLASLt workspace)");
      !s.ok()) {
    return s;
  }
  if (absl::Status s =
          StatusOf(cudaMallocHost(reinterpret_cast<void**>(&state->host_result),
                                  sizeof(double)),
                   "cudaMallocHost");
      !s.ok()) {
    return s;
  }
  return std::unique_ptr<CudaBackend>(new CudaBackend(std::move(state)));
}

CudaBackend::CudaBackend(std::unique_ptr<State> state) : s_(std::move(state)) {}

CudaBackend::~CudaBackend() = default;

std::string CudaBackend::Name() const {
  return s_->precision == Precision::kBf16 ? "cuda_bf16" : "cuda_fp32";
}

std::string CudaBackend::DeviceName() const { return s_->device_name; }

void* CudaBackend::stream() const { return s_->stream; }

float* CudaBackend::Alloc(size_t n) {
  return static_cast<float*>(DeviceAlloc(n * sizeof(float), ""));
}

void CudaBackend::Free(float* p) { DeviceFree(p); }

CudaBackend::MemoryStats CudaBackend::ProcessMemoryStats() {
  std::lock_guard<std::mutex> lock(AllocationMutex());
  return Stats();
}

void CudaBackend::Zero(float* p, size_t n) {
  PREFOPT_CHECK_CUDA(cudaMemsetAsync(p, 0, n * sizeof(float), s_->stream));
}

void CudaBackend::CopyToDevice(float* dst, const float* host_src, size_t n) {
  PREFOPT_CHECK_CUDA(cudaMemcpyAsync(dst, host_src, n * sizeof(float),
                                     cudaMemcpyHostToDevice, s_->stream));
  // From pageable memory the driver has staged the data when the call
  // returns; from page-locked memory the copy may still be reading it.
  cudaPointerAttributes attr;
  PREFOPT_CHECK_CUDA(cudaPointerGetAttributes(&attr, host_src));
  if (attr.type == cudaMemoryTypeHost) {
    PREFOPT_CHECK_CUDA(cudaStreamSynchronize(s_->stream));
  }
}

void CudaBackend::Copy(float* dst, const float* src, size_t n) {
  PREFOPT_CHECK_CUDA(cudaMemcpyAsync(dst, src, n * sizeof(float),
                                     cudaMemcpyDeviceToDevice, s_->stream));
}

void CudaBackend::CopyToHost(float* host_dst, const float* src, size_t n) {
  PREFOPT_CHECK_CUDA(cudaMemcpyAsync(host_dst, src, n * sizeof(float),
                                     cudaMemcpyDeviceToHost, s_->stream));
  PREFOPT_CHECK_CUDA(cudaStreamSynchronize(s_->stream));
}

void CudaBackend::EmbeddingForward(float* out, const int32_t* ids,
                                   const int32_t* pos, const float* wte,
                                   const float* wpe, int N, int C) {
  if (N == 0) return;
  std::vector<int32_t> packed(ids, ids + N);
  if (wpe != nullptr) packed.insert(packed.end(), pos, pos + N);
  const int32_t* dev = s_->Upload(s_->indices, packed.data(), packed.size());
  PREFOPT_CHECK_CUDA(cuda::EmbeddingForward(s_->stream, out, dev,
                                            wpe != nullptr ? dev + N : nullptr,
                                            wte, wpe, N, C));
}

void CudaBackend::EmbeddingBackward(float* dwte, float* dwpe, const float* dout,
                                    const int32_t* ids, const int32_t* pos,
                                    int N, int C) {
  if (N == 0 || (dwte == nullptr && dwpe == nullptr)) return;
  struct Table {
    Table(float* g, const int32_t* k) : grad(g), keys(k) {}
    float* grad;
    const int32_t* keys;
    int buckets = 0;
    size_t rows_at = 0, keys_at = 0, begin_at = 0;
  };
  Table tables[] = {Table(dwte, ids), Table(dwpe, pos)};
  std::vector<int32_t> packed;
  for (Table& t : tables) {
    if (t.grad == nullptr) continue;
    t.buckets =
        AppendBuckets(t.keys, N, &packed, &t.rows_at, &t.keys_at, &t.begin_at);
  }
  const int32_t* dev = s_->Upload(s_->indices, packed.data(), packed.size());
  for (const Table& t : tables) {
    if (t.grad == nullptr) continue;
    PREFOPT_CHECK_CUDA(cuda::BucketAccumulate(s_->stream, t.grad, dout,
                                              dev + t.rows_at, dev + t.keys_at,
                                              dev + t.begin_at, t.buckets, C));
  }
}

void CudaBackend::LayerNormForward(float* out, float* mean, float* rstd,
                                   const float* inp, const float* weight,
                                   const float* bias, int N, int C, float eps) {
  if (N == 0) return;
  PREFOPT_CHECK_CUDA(cuda::LayerNormForward(s_->stream, out, mean, rstd, inp,
                                            weight, bias, N, C, eps));
}

void CudaBackend::LayerNormBackward(float* dinp, float* dweight, float* dbias,
                                    const float* dout, const float* inp,
                                    const float* weight, const float* mean,
                                    const float* rstd, int N, int C) {
  if (N == 0) return;
  if (dinp != nullptr) {
    PREFOPT_CHECK_CUDA(cuda::LayerNormBackwardInput(s_->stream, dinp, dout, inp,
                                                    weight, mean, rstd, N, C));
  }
  if (dweight != nullptr || dbias != nullptr) {
    float* partials = s_->floats.Get<float>(
        2 * static_cast<size_t>(cuda::ColumnSlices(N)) * C);
    PREFOPT_CHECK_CUDA(cuda::ColumnGradients(
        s_->stream, cuda::ColumnGradient::kLayerNorm, dweight, dbias, dout, inp,
        mean, rstd, N, C, partials));
  }
}

void CudaBackend::RmsNormForward(float* out, float* rstd, const float* inp,
                                 const float* weight, int N, int C, float eps) {
  if (N == 0) return;
  PREFOPT_CHECK_CUDA(
      cuda::RmsNormForward(s_->stream, out, rstd, inp, weight, N, C, eps));
}

void CudaBackend::RmsNormBackward(float* dinp, float* dweight,
                                  const float* dout, const float* inp,
                                  const float* weight, const float* rstd, int N,
                                  int C) {
  if (N == 0) return;
  if (dinp != nullptr) {
    PREFOPT_CHECK_CUDA(cuda::RmsNormBackwardInput(s_->stream, dinp, dout, inp,
                                                  weight, rstd, N, C));
  }
  if (dweight != nullptr) {
    float* partials = s_->floats.Get<float>(
        2 * static_cast<size_t>(cuda::ColumnSlices(N)) * C);
    PREFOPT_CHECK_CUDA(cuda::ColumnGradients(
        s_->stream, cuda::ColumnGradient::kRmsNorm, dweight, nullptr, dout, inp,
        nullptr, rstd, N, C, partials));
  }
}

// cuBLASLt is column-major, and a row-major R x K matrix is the column-major
// K x R matrix of the same memory; the GEMMs below are written in those
// column-major views. Forward: out (OC x N) = weight (C x OC)^T inp (C x N).
void CudaBackend::RowMeans(float* out, const float* in, int N, int width,
                           int stride) {
  if (N == 0) return;
  PREFOPT_CHECK_CUDA(cuda::RowMeans(s_->stream, out, in, N, width, stride));
}

void CudaBackend::MatmulForward(float* out, const float* inp,
                                const float* weight, const float* bias, int N,
                                int C, int OC) {
  if (N == 0) return;
  const bool bf16 = s_->precision == Precision::kBf16;
  GemmCall g;
  g.trans_a = true;
  g.m = OC;
  g.n = N;
  g.k = C;
  g.a = bf16 ? s_->ToBf16(s_->bf16_a, weight, static_cast<size_t>(OC) * C)
             : weight;
  g.lda = C;
  g.b = bf16 ? s_->ToBf16(s_->bf16_b, inp, static_cast<size_t>(N) * C) : inp;
  g.ldb = C;
  g.d = out;
  g.ldd = OC;
  g.bias = bias;
  g.bf16 = bf16;
  s_->Gemm(g);
}

void CudaBackend::MatmulBackward(float* dinp, float* dweight, float* dbias,
                                 const float* dout, const float* inp,
                                 const float* weight, int N, int C, int OC) {
  if (N == 0) return;
  const bool bf16 = s_->precision == Precision::kBf16;
  const void* dout_op = dout;
  if (bf16 && (dinp != nullptr || dweight != nullptr)) {
    dout_op = s_->ToBf16(s_->bf16_c, dout, static_cast<size_t>(N) * OC);
  }
  const void* weight_op =
      bf16 && dinp != nullptr
          ? s_->ToBf16(s_->bf16_a, weight, static_cast<size_t>(OC) * C)
          : weight;
  const void* inp_op =
      bf16 && dweight != nullptr
          ? s_->ToBf16(s_->bf16_b, inp, static_cast<size_t>(N) * C)
          : inp;
  s_->LinearGrads(dinp, dweight, weight_op, inp_op, dout_op, OC, N, C, OC,
                  bf16);
  if (dbias != nullptr) {
    float* partials = s_->floats.Get<float>(
        2 * static_cast<size_t>(cuda::ColumnSlices(N)) * OC);
    PREFOPT_CHECK_CUDA(cuda::ColumnGradients(
        s_->stream, cuda::ColumnGradient::kBias, nullptr, dbias, dout, nullptr,
        nullptr, nullptr, N, OC, partials));
  }
}

void CudaBackend::GeluForward(float* out, const float* inp, size_t n) {
  PREFOPT_CHECK_CUDA(cuda::GeluForward(s_->stream, out, inp, n));
}

void CudaBackend::GeluBackward(float* dinp, const float* inp, const float* dout,
                               size_t n) {
  PREFOPT_CHECK_CUDA(cuda::GeluBackward(s_->stream, dinp, inp, dout, n));
}

void CudaBackend::SwiGluForward(float* out, const float* gate_up, int N,
                                int FF) {
  PREFOPT_CHECK_CUDA(cuda::SwiGluForward(s_->stream, out, gate_up, N, FF));
}

void CudaBackend::SwiGluBackward(float* dgate_up, const float* gate_up,
                                 const float* dout, int N, int FF) {
  PREFOPT_CHECK_CUDA(
      cuda::SwiGluBackward(s_->stream, dgate_up, gate_up, dout, N, FF));
}

void CudaBackend::Add(float* out, const float* a, const float* b, size_t n) {
  PREFOPT_CHECK_CUDA(cuda::Add(s_->stream, out, a, b, n));
}

void CudaBackend::Axpy(float* y, float alpha, const float* x, size_t n) {
  PREFOPT_CHECK_CUDA(cuda::Axpy(s_->stream, y, alpha, x, n));
}

void CudaBackend::Multiply(float* out, const float* a, const float* b,
                           size_t n) {
  PREFOPT_CHECK_CUDA(cuda::Multiply(s_->stream, out, a, b, n));
}

void CudaBackend::WidenBf16(float* out, const uint16_t* in, size_t n) {
  PREFOPT_CHECK_CUDA(cuda::WidenBf16(s_->stream, out, in, n));
}

size_t CudaBackend::AttentionProbsSize(const SeqSpan* spans, int num_seqs,
                                       int NH) const {
  size_t rows = 0;
  for (int s = 0; s < num_seqs; ++s) {
    rows = std::max(rows, static_cast<size_t>(spans[s].start) + spans[s].len);
  }
  return rows * NH;
}

namespace {

// The attention kernels' limits, checked before any launch.
void CheckAttentionShape(int NH, int NKV, int hs, bool bf16, int max_smem) {
  if (hs < 1 || hs > cuda::kMaxAttentionHeadSize) {
    Fatal(absl::StrCat("attention head size ", hs, " outside [1, ",
                       cuda::kMaxAttentionHeadSize, "]"));
  }
  if (NKV < 1 || NH % NKV != 0) {
    Fatal(absl::StrCat("attention: NKV = ", NKV, " does not divide NH = ", NH));
  }
  const size_t smem = cuda::AttentionSmemBytes(bf16, hs, /*backward=*/true);
  if (smem > static_cast<size_t>(max_smem)) {
    Fatal(absl::StrCat("attention with head size ", hs, " needs ", smem,
                       " bytes of shared memory per block; the device allows ",
                       max_smem));
  }
}

}  // namespace

void CudaBackend::AttentionForward(float* out, float* probs, const float* qkv,
                                   const SeqSpan* spans, int num_seqs, int NH,
                                   int NKV, int hs) {
  const bool bf16 = s_->precision == Precision::kBf16;
  CheckAttentionShape(NH, NKV, hs, bf16, s_->max_smem_per_block);
  int num_tiles = 0;
  const std::vector<int32_t> packed =
      AttentionTiles(spans, num_seqs, hs, &num_tiles);
  if (num_tiles == 0) return;
  const auto* tiles = reinterpret_cast<const cuda::AttentionTile*>(
      s_->Upload(s_->attention_tiles, packed.data(), packed.size()));
  PREFOPT_CHECK_CUDA(cuda::AttentionForward(s_->stream, bf16, out, probs,
                                            nullptr, nullptr, qkv, tiles,
                                            num_tiles, NH, NKV, hs));
}

// The kernels take rowsum(dout * out) from a forward pass with dout instead
// of reading out.
void CudaBackend::AttentionBackward(float* dqkv, const float* dout,
                                    const float* qkv, const float* /*out*/,
                                    const float* probs, const SeqSpan* spans,
                                    int num_seqs, int NH, int NKV, int hs) {
  const bool bf16 = s_->precision == Precision::kBf16;
  CheckAttentionShape(NH, NKV, hs, bf16, s_->max_smem_per_block);
  int num_tiles = 0;
  const std::vector<int32_t> packed =
      AttentionTiles(spans, num_seqs, hs, &num_tiles);
  if (num_tiles == 0) return;
  const auto* tiles = reinterpret_cast<const cuda::AttentionTile*>(
      s_->Upload(s_->attention_tiles, packed.data(), packed.size()));
  float* dsum = s_->floats.Get<float>(AttentionProbsSize(spans, num_seqs, NH));
  PREFOPT_CHECK_CUDA(cuda::AttentionForward(s_->stream, bf16, nullptr, nullptr,
                                            dout, dsum, qkv, tiles, num_tiles,
                                            NH, NKV, hs));
  PREFOPT_CHECK_CUDA(cuda::AttentionBackward(
      s_->stream, bf16, dqkv, dout, qkv, probs, dsum, tiles, num_tiles,
      tiles + num_tiles, num_tiles, NH, NKV, hs));
}

void CudaBackend::CachedAttentionForward(float* out, const float* qkv, int past,
                                         int n, int NH, int NKV, int hs) {
  if (NKV < 1 || NH % NKV != 0) {
    Fatal(absl::StrCat("attention: NKV = ", NKV, " does not divide NH = ", NH));
  }
  float* scores =
      s_->floats.Get<float>(static_cast<size_t>(n) * NH * (past + n));
  PREFOPT_CHECK_CUDA(cuda::CachedAttentionForward(s_->stream, out, scores, qkv,
                                                  past, n, NH, NKV, hs));
}

void CudaBackend::RopeForward(float* qkv, const int32_t* pos, const float* cos,
                              const float* sin, int N, int NH, int NKV,
                              int hs) {
  if (N == 0) return;
  const int32_t* dev = s_->Upload(s_->positions, pos, N);
  PREFOPT_CHECK_CUDA(
      cuda::RopeRotate(s_->stream, qkv, dev, cos, sin, N, NH, NKV, hs, 1.0f));
}

void CudaBackend::RopeBackward(float* dqkv, const int32_t* pos,
                               const float* cos, const float* sin, int N,
                               int NH, int NKV, int hs) {
  if (N == 0) return;
  const int32_t* dev = s_->Upload(s_->positions, pos, N);
  // The rotation is orthogonal: its transpose is the rotation by -theta.
  PREFOPT_CHECK_CUDA(
      cuda::RopeRotate(s_->stream, dqkv, dev, cos, sin, N, NH, NKV, hs, -1.0f));
}

namespace {

// Labels index wout's rows; an out-of-range one is a caller bug (as in the
// CPU reference).
void CheckLabels(const int32_t* labels, int N, int V) {
  for (int n = 0; n < N; ++n) {
    if (labels[n] < 0 || labels[n] >= V) {
      Fatal(absl::StrCat("OutputForward/Backward: label ", labels[n],
                         " of row ", n, " outside [0, ", V, ")"));
    }
  }
}

}  // namespace

namespace {

// The logits of rows [r0, r0 + rows) of h_op (C wide, elements of `elem`
// bytes) under w_op, in column-major views (see MatmulForward): out (V x
// rows) = w_op (C x V)^T h_chunk (C x rows).
GemmCall ChunkLogits(const void* w_op, const char* h_op, size_t elem, int r0,
                     int rows, int C, int V, float* out, bool bf16) {
  GemmCall g;
  g.trans_a = true;
  g.m = V;
  g.n = rows;
  g.k = C;
  g.a = w_op;
  g.lda = C;
  g.b = h_op + static_cast<size_t>(r0) * C * elem;
  g.ldb = C;
  g.d = out;
  g.ldd = V;
  g.bf16 = bf16;
  return g;
}

}  // namespace

// The output layer's operands as the GEMMs take them: the fp32 arrays, or
// their bf16 copies in `h_slot` and `w_slot`.
struct CudaBackend::OutputOperands {
  const char* h;
  const void* w;
  size_t elem;
};

CudaBackend::OutputOperands CudaBackend::Operands(
    const float* h, const float* wout, int N, int C, int V, int slot,
    const OutputOperands* same_wout) {
  if (s_->precision != Precision::kBf16)
    return {reinterpret_cast<const char*>(h), wout, 4};
  Scratch& h_slot = slot == 0 ? s_->bf16_b : s_->bf16_d;
  Scratch& w_slot = slot == 0 ? s_->bf16_a : s_->bf16_c;
  return {static_cast<const char*>(
              s_->ToBf16(h_slot, h, static_cast<size_t>(N) * C)),
          same_wout != nullptr
              ? same_wout->w
              : s_->ToBf16(w_slot, wout, static_cast<size_t>(V) * C),
          2};
}

// The reference's operands beside the policy's `op`: a LoRA policy is its
// own reference, and its frozen output embedding is rounded once.
CudaBackend::OutputOperands CudaBackend::ReferenceOperands(
    const SparsePoOutputLayers& layers, int N, const OutputOperands& op) {
  return Operands(layers.ref_h, layers.ref_wout, N, layers.ref_C, layers.V, 1,
                  layers.ref_wout == layers.wout ? &op : nullptr);
}

// dz (V x rows, in place in chunk_buf: bf16 mode as bf16 with leading
// dimension 2V) into dh_chunk (C x rows) += wout (C x V) dz and dwout (C x V)
// += h_chunk (C x rows) dz^T.
void CudaBackend::AccumulateOutputGrads(float* dh, float* dwout,
                                        const OutputOperands& op, int r0,
                                        int rows, int C, int V,
                                        const float* chunk_buf) {
  const bool bf16 = s_->precision == Precision::kBf16;
  s_->LinearGrads(dh == nullptr ? nullptr : dh + static_cast<size_t>(r0) * C,
                  dwout, op.w, op.h + static_cast<size_t>(r0) * C * op.elem,
                  chunk_buf, bf16 ? 2 * V : V, rows, C, V, bf16);
}

// Per chunk of rows: the logits, then one fused kernel per row.
void CudaBackend::OutputForward(float* lse, float* logp, float* logit_sum,
                                int32_t* correct, float* entropy,
                                float* log_sum_sq_probs, const float* h,
                                const float* wout, const int32_t* labels, int N,
                                int C, int V, float* chunk_buf, int chunk) {
  if (N == 0) return;
  CheckLabels(labels, N, V);
  const bool bf16 = s_->precision == Precision::kBf16;
  const int32_t* dev_labels = s_->Upload(s_->labels, labels, N);
  const OutputOperands op = Operands(h, wout, N, C, V, 0);
  for (int r0 = 0; r0 < N; r0 += chunk) {
    const int rows = std::min(chunk, N - r0);
    s_->Gemm(ChunkLogits(op.w, op.h, op.elem, r0, rows, C, V, chunk_buf, bf16));
    PREFOPT_CHECK_CUDA(cuda::OutputRowStats(
        s_->stream, lse + r0, logp + r0, logit_sum + r0, correct + r0,
        entropy + r0,
        log_sum_sq_probs == nullptr ? nullptr : log_sum_sq_probs + r0,
        chunk_buf, dev_labels + r0, rows, V));
  }
}

// Per chunk: the logits again, dz in place, then its two GEMMs.
void CudaBackend::OutputBackward(float* dh, float* dwout, const float* h,
                                 const float* wout, const int32_t* labels,
                                 const float* lse, const float* coef, int N,
                                 int C, int V, float* chunk_buf, int chunk) {
  if (N == 0 || (dh == nullptr && dwout == nullptr)) return;
  CheckLabels(labels, N, V);
  const bool bf16 = s_->precision == Precision::kBf16;
  const int32_t* dev_labels = s_->Upload(s_->labels, labels, N);
  const OutputOperands op = Operands(h, wout, N, C, V, 0);
  for (int r0 = 0; r0 < N; r0 += chunk) {
    const int rows = std::min(chunk, N - r0);
    s_->Gemm(ChunkLogits(op.w, op.h, op.elem, r0, rows, C, V, chunk_buf, bf16));
    PREFOPT_CHECK_CUDA(cuda::OutputRowGrad(s_->stream, bf16, chunk_buf,
                                           dev_labels + r0, lse + r0, coef + r0,
                                           rows, V));
    AccumulateOutputGrads(dh, dwout, op, r0, rows, C, V, chunk_buf);
  }
}

// As OutputForward, with the reference's logits of the same rows beside the
// policy's.
void CudaBackend::SparsePoOutputForward(const SparsePoOutputLayers& layers,
                                        const int32_t* labels, int N,
                                        float* chunk_buf, float* ref_chunk_buf,
                                        int chunk,
                                        const SparsePoRowStats& out) {
  if (N == 0) return;
  const int C = layers.C, RC = layers.ref_C, V = layers.V;
  CheckLabels(labels, N, V);
  const bool bf16 = s_->precision == Precision::kBf16;
  const int32_t* dev_labels = s_->Upload(s_->labels, labels, N);
  const OutputOperands op = Operands(layers.h, layers.wout, N, C, V, 0);
  const OutputOperands ref = ReferenceOperands(layers, N, op);
  auto at = [](float* p, int r0) { return p == nullptr ? nullptr : p + r0; };
  for (int r0 = 0; r0 < N; r0 += chunk) {
    const int rows = std::min(chunk, N - r0);
    s_->Gemm(ChunkLogits(op.w, op.h, op.elem, r0, rows, C, V, chunk_buf, bf16));
    s_->Gemm(ChunkLogits(ref.w, ref.h, ref.elem, r0, rows, RC, V, ref_chunk_buf,
                         bf16));
    PREFOPT_CHECK_CUDA(cuda::SparsePoRowStats(
        s_->stream, out.lse + r0, out.ref_lse + r0, out.logp + r0,
        out.ref_logp + r0, out.kl + r0, at(out.logit_sum, r0),
        at(out.ref_logit_sum, r0), at(out.entropy, r0), chunk_buf,
        ref_chunk_buf, dev_labels + r0, rows, V));
  }
}

// As OutputBackward. The coefficients are device memory, so no chunk is
// skipped: the reference's logits are recomputed for every one.
void CudaBackend::SparsePoOutputBackward(const SparsePoOutputLayers& layers,
                                         const int32_t* labels, int N,
                                         const float* lse, const float* ref_lse,
                                         const float* coef_a,
                                         const float* coef_b, float* chunk_buf,
                                         float* ref_chunk_buf, int chunk,
                                         float* dh, float* dwout) {
  if (N == 0 || (dh == nullptr && dwout == nullptr)) return;
  const int C = layers.C, RC = layers.ref_C, V = layers.V;
  CheckLabels(labels, N, V);
  const bool bf16 = s_->precision == Precision::kBf16;
  const int32_t* dev_labels = s_->Upload(s_->labels, labels, N);
  const OutputOperands op = Operands(layers.h, layers.wout, N, C, V, 0);
  const OutputOperands ref = ReferenceOperands(layers, N, op);
  for (int r0 = 0; r0 < N; r0 += chunk) {
    const int rows = std::min(chunk, N - r0);
    s_->Gemm(ChunkLogits(op.w, op.h, op.elem, r0, rows, C, V, chunk_buf, bf16));
    s_->Gemm(ChunkLogits(ref.w, ref.h, ref.elem, r0, rows, RC, V, ref_chunk_buf,
                         bf16));
    PREFOPT_CHECK_CUDA(cuda::SparsePoRowGrad(
        s_->stream, bf16, chunk_buf, ref_chunk_buf, dev_labels + r0, lse + r0,
        ref_lse + r0, coef_a + r0, coef_b + r0, rows, V));
    AccumulateOutputGrads(dh, dwout, op, r0, rows, C, V, chunk_buf);
  }
}

void CudaBackend::SparsePoMaskForward(float* mask, const float* hidden,
                                      int rows, const float* params,
                                      const SparsePoMaskNetShape& shape) {
  double* scratch = s_->sparsepo_work.Get<double>(
      cuda::SparsePoMaskScratchDoubles(shape, rows));
  PREFOPT_CHECK_CUDA(cuda::SparsePoMaskForward(s_->stream, mask, hidden, rows,
                                               params, shape, scratch));
}

void CudaBackend::SparsePoMaskBackward(float* grads, const float* dmask,
                                       const float* hidden, int rows,
                                       const float* params,
                                       const SparsePoMaskNetShape& shape) {
  double* scratch = s_->sparsepo_work.Get<double>(
      cuda::SparsePoMaskScratchDoubles(shape, rows));
  PREFOPT_CHECK_CUDA(cuda::SparsePoMaskBackward(
      s_->stream, grads, dmask, hidden, rows, params, shape, scratch));
}

void CudaBackend::MapoMask(float* mask, const float* scores, int rows,
                           const MapoGroup* map_groups, int num_maps,
                           const MapoGroup* groups, int num_groups,
                           const SeqSpan* spans, int num_spans) {
  if (num_spans == 0) return;
  // One upload: the maps' groups, the selected groups, the spans.
  static_assert(sizeof(MapoGroup) == sizeof(int32_t));
  static_assert(sizeof(SeqSpan) == 2 * sizeof(int32_t));
  std::vector<int32_t>& packed = s_->objective_upload;
  packed.resize(num_maps + num_groups + 2 * static_cast<size_t>(num_spans));
  std::memcpy(packed.data(), map_groups, num_maps * sizeof(int32_t));
  std::memcpy(packed.data() + num_maps, groups, num_groups * sizeof(int32_t));
  std::memcpy(packed.data() + num_maps + num_groups, spans,
              num_spans * sizeof(SeqSpan));
  const int32_t* dev =
      s_->Upload(s_->objective_in, packed.data(), packed.size());
  double* work = s_->sparsepo_work.Get<double>(2 * static_cast<size_t>(rows));
  PREFOPT_CHECK_CUDA(cuda::MapoMask(
      s_->stream, mask, scores, rows, dev, num_maps, dev + num_maps, num_groups,
      reinterpret_cast<const SeqSpan*>(dev + num_maps + num_groups), num_spans,
      work));
}

void CudaBackend::SparsePoCoefficients(const SparsePoRowOutputs& out,
                                       double* metrics,
                                       const SparsePoRowInputs& in,
                                       const SeqSpan* spans, int num_pairs,
                                       const SparsePoParams& params) {
  if (num_pairs == 0) return;
  const int32_t* dev =
      s_->Upload(s_->objective_in, reinterpret_cast<const int32_t*>(spans),
                 4 * static_cast<size_t>(num_pairs));
  double* pair_metrics = s_->sparsepo_work.Get<double>(
      static_cast<size_t>(num_pairs) * kSparsePoMetricCount);
  PREFOPT_CHECK_CUDA(cuda::SparsePoCoefficients(
      s_->stream, out, metrics, in, reinterpret_cast<const SeqSpan*>(dev),
      num_pairs, params, pair_metrics));
}

void CudaBackend::ObjectiveCoefficients(
    float* coef, double* metrics, const float* logp, const float* logit_sum,
    const int32_t* correct, const float* entropy, const float* log_sum_sq_probs,
    const SeqSpan* spans, const double* reference,
    const float* reference_tokens, int num_seqs,
    const ObjectiveParams& params) {
  if (num_seqs == 0) return;
  // One upload: the reference's doubles (first, so they stay 8-byte aligned),
  // the spans as int32 words, then the per-token reference log-probs of rows
  // [0, the last span row].
  static_assert(sizeof(SeqSpan) == 2 * sizeof(int32_t));
  const bool with_reference =
      ReferenceValuesPerSequence(params) > 0 && reference != nullptr;
  const bool with_tokens =
      NeedsReferenceTokens(params) && reference_tokens != nullptr;
  const size_t ref_words = with_reference
                               ? 2 * static_cast<size_t>(num_seqs) *
                                     ReferenceValuesPerSequence(params)
                               : 0;
  const size_t span_words = 2 * static_cast<size_t>(num_seqs);
  size_t token_words = 0;
  if (with_tokens) {
    for (int s = 0; s < num_seqs; ++s) {
      token_words = std::max(
          token_words, static_cast<size_t>(spans[s].start) + spans[s].len);
    }
  }
  std::vector<int32_t>& packed = s_->objective_upload;
  packed.resize(ref_words + span_words + token_words);
  if (with_reference) {
    std::memcpy(packed.data(), reference, ref_words * sizeof(int32_t));
  }
  std::memcpy(packed.data() + ref_words, spans, span_words * sizeof(int32_t));
  static_assert(sizeof(float) == sizeof(int32_t));
  if (with_tokens) {
    std::memcpy(packed.data() + ref_words + span_words, reference_tokens,
                token_words * sizeof(int32_t));
  }
  int32_t* dev = s_->Upload(s_->objective_in, packed.data(), packed.size());
  double* scratch =
      s_->objective_work.Get<double>(cuda::ObjectiveScratchDoubles(num_seqs));
  PREFOPT_CHECK_CUDA(cuda::ObjectiveCoefficients(
      s_->stream, coef, metrics, logp, logit_sum, correct, entropy,
      params.use_weighting ? log_sum_sq_probs : nullptr,
      reinterpret_cast<const SeqSpan*>(dev + ref_words),
      with_reference ? reinterpret_cast<const double*>(dev) : nullptr,
      with_tokens ? reinterpret_cast<const float*>(dev + ref_words + span_words)
                  : nullptr,
      num_seqs, params, scratch));
}

double CudaBackend::SumSquares(const float* x, size_t n) {
  const int blocks = cuda::SumSquaresBlocks(n);
  double* partials = s_->doubles.Get<double>(blocks + 1);
  double* result = partials + blocks;
  PREFOPT_CHECK_CUDA(cuda::SumSquares(s_->stream, result, partials, x, n));
  PREFOPT_CHECK_CUDA(cudaMemcpyAsync(s_->host_result, result, sizeof(double),
                                     cudaMemcpyDeviceToHost, s_->stream));
  PREFOPT_CHECK_CUDA(cudaStreamSynchronize(s_->stream));
  return *s_->host_result;
}

void CudaBackend::Scale(float* x, float alpha, size_t n) {
  PREFOPT_CHECK_CUDA(cuda::Scale(s_->stream, x, alpha, n));
}

void CudaBackend::AdamW(float* p, const float* grad, float* m, float* v,
                        size_t n, const AdamWParams& hp) {
  // The scalar factors in double as torch computes them in Python (and as the
  // CPU reference does), applied in fp32.
  const double bias_correction1 = 1.0 - std::pow(double{hp.beta1}, hp.step);
  const double bias_correction2 = 1.0 - std::pow(double{hp.beta2}, hp.step);
  cuda::AdamWFactors f;
  f.decay = static_cast<float>(1.0 - double{hp.lr} * hp.weight_decay);
  f.one_minus_beta1 = static_cast<float>(1.0 - hp.beta1);
  f.beta2 = hp.beta2;
  f.one_minus_beta2 = static_cast<float>(1.0 - hp.beta2);
  f.step_size = static_cast<float>(hp.lr / bias_correction1);
  f.bias_correction2_sqrt = static_cast<float>(std::sqrt(bias_correction2));
  f.eps = hp.eps;
  PREFOPT_CHECK_CUDA(cuda::AdamW(s_->stream, p, grad, m, v, n, f));
}

}  // namespace prefopt::kernels
