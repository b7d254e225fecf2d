// Tests of the CUDA simulation's semantics, with expectations taken from the
// CUDA C++ Programming Guide (built-in variables, __syncthreads, the
// __shfl_*_sync lane rules, WMMA shapes) and the runtime/cuBLASLt API
// documentation, not from the simulation itself.
#include <cublasLt.h>

#include <cmath>
#include <cstring>
#include <numeric>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cuda/sim/device.h"
#include "kernels/cuda/sim/runtime.h"

namespace prefopt::cudasim {
namespace {

#define LAUNCH(kernel, grid, block, smem, stream)                        \
  ::prefopt::cudasim::Launch((kernel), #kernel, (grid), (block), (smem), \
                             (stream))

template <typename T>
T* DeviceArray(size_t n) {
  void* p = nullptr;
  EXPECT_EQ(cudaMalloc(&p, n * sizeof(T)), cudaSuccess);
  return static_cast<T*>(p);
}

template <typename T>
std::vector<T> ToHost(const T* d, size_t n) {
  std::vector<T> h(n);
  EXPECT_EQ(cudaMemcpy(h.data(), d, n * sizeof(T), cudaMemcpyDeviceToHost),
            cudaSuccess);
  return h;
}

__global__ void IndexKernel(int* out) {
  const int block =
      blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
  const int thread =
      threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
  const int per_block = blockDim.x * blockDim.y * blockDim.z;
  out[block * per_block + thread] = threadIdx.x + 10 * threadIdx.y +
                                    100 * threadIdx.z + 1000 * blockIdx.x +
                                    10000 * blockIdx.y + 100000 * blockIdx.z;
}

TEST(CudaSimulation, BuiltInVariables) {
  const dim3 grid(3, 2, 2), block(4, 3, 2);
  int* d = DeviceArray<int>(12 * 24);
  LAUNCH(IndexKernel, grid, block, 0, nullptr)(d);
  ASSERT_EQ(cudaGetLastError(), cudaSuccess);
  const std::vector<int> h = ToHost(d, 12 * 24);
  for (int bz = 0; bz < 2; ++bz)
    for (int by = 0; by < 2; ++by)
      for (int bx = 0; bx < 3; ++bx)
        for (int tz = 0; tz < 2; ++tz)
          for (int ty = 0; ty < 3; ++ty)
            for (int tx = 0; tx < 4; ++tx) {
              const int b = bx + 3 * (by + 2 * bz), t = tx + 4 * (ty + 3 * tz);
              EXPECT_EQ(h[b * 24 + t], tx + 10 * ty + 100 * tz + 1000 * bx +
                                           10000 * by + 100000 * bz);
            }
  cudaFree(d);
}

// Reverses each block's slice through static shared memory: every thread
// reads a value another thread wrote before the barrier.
__global__ void ReverseKernel(float* data) {
  __shared__ float tile[256];
  const int t = threadIdx.x;
  float* slice = data + blockIdx.x * blockDim.x;
  tile[t] = slice[t];
  __syncthreads();
  slice[t] = tile[blockDim.x - 1 - t];
}

TEST(CudaSimulation, SharedMemoryAndBarrier) {
  const int blocks = 37, threads = 256;
  std::vector<float> h(blocks * threads);
  std::iota(h.begin(), h.end(), 0.0f);
  float* d = DeviceArray<float>(h.size());
  cudaMemcpy(d, h.data(), h.size() * 4, cudaMemcpyHostToDevice);
  LAUNCH(ReverseKernel, blocks, threads, 0, nullptr)(d);
  const std::vector<float> r = ToHost(d, h.size());
  for (int b = 0; b < blocks; ++b) {
    for (int t = 0; t < threads; ++t) {
      ASSERT_EQ(r[b * threads + t], h[b * threads + threads - 1 - t]);
    }
  }
  cudaFree(d);
}

// Threads past n exit before the barrier; the rest must not wait for them.
__global__ void EarlyExitKernel(int* out, int n) {
  __shared__ int sum;
  if (threadIdx.x >= static_cast<unsigned>(n)) return;
  if (threadIdx.x == 0) sum = 0;
  __syncthreads();
  atomicAdd(&sum, static_cast<int>(threadIdx.x));
  __syncthreads();
  if (threadIdx.x == 0) out[blockIdx.x] = sum;
}

TEST(CudaSimulation, ExitedThreadsLeaveBarriers) {
  int* d = DeviceArray<int>(4);
  LAUNCH(EarlyExitKernel, 4, 128, 0, nullptr)(d, 45);
  for (int v : ToHost(d, 4)) EXPECT_EQ(v, 44 * 45 / 2);
  cudaFree(d);
}

enum Op { kIdx, kUp, kDown, kXor };

__global__ void ShuffleKernel(int* out, int op, int arg, int width) {
  const int lane = threadIdx.x % 32;
  const int v = 100 + threadIdx.x;
  int r = 0;
  switch (op) {
    case kIdx:
      r = __shfl_sync(0xffffffffu, v, arg, width);
      break;
    case kUp:
      r = __shfl_up_sync(0xffffffffu, v, arg, width);
      break;
    case kDown:
      r = __shfl_down_sync(0xffffffffu, v, arg, width);
      break;
    case kXor:
      r = __shfl_xor_sync(0xffffffffu, v, arg, width);
      break;
  }
  (void)lane;
  out[threadIdx.x] = r;
}

// The source lane of each shuffle form, as the CUDA Programming Guide
// defines them (a lane outside its width-segment reads its own value).
int ExpectedSource(int op, int lane, int arg, int width) {
  const int base = lane / width * width;
  switch (op) {
    case kIdx:
      return base + arg % width;
    case kUp:
      return lane - base >= arg ? lane - arg : lane;
    case kDown:
      return lane - base + arg < width ? lane + arg : lane;
    default: {
      const int src = lane ^ arg;
      return src >= base && src < base + width ? src : lane;
    }
  }
}

TEST(CudaSimulation, ShuffleLaneRules) {
  int* d = DeviceArray<int>(64);
  for (int op : {kIdx, kUp, kDown, kXor}) {
    for (int width : {32, 16, 8, 4, 2, 1}) {
      for (int arg : {0, 1, 3, 5, 8, 17, 31}) {
        LAUNCH(ShuffleKernel, 1, 64, 0, nullptr)(d, op, arg, width);
        const std::vector<int> h = ToHost(d, 64);
        for (int t = 0; t < 64; ++t) {
          const int warp = t / 32 * 32;
          const int src = warp + ExpectedSource(op, t % 32, arg, width);
          ASSERT_EQ(h[t], 100 + src) << "op " << op << " width " << width
                                     << " arg " << arg << " thread " << t;
        }
      }
    }
  }
  cudaFree(d);
}

// A full-warp butterfly sum in a partial warp (block of 40): lanes 8..31 of
// the second warp do not exist, so their contributions are undefined on the
// GPU; the simulation poisons them (NaN).
__global__ void WarpSumKernel(float* out) {
  float v = 1.0f;
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  out[threadIdx.x] = v;
}

TEST(CudaSimulation, PartialWarpReadsArePoisoned) {
  float* d = DeviceArray<float>(40);
  LAUNCH(WarpSumKernel, 1, 40, 0, nullptr)(d);
  const std::vector<float> h = ToHost(d, 40);
  for (int t = 0; t < 32; ++t) EXPECT_EQ(h[t], 32.0f);
  for (int t = 32; t < 40; ++t) EXPECT_TRUE(std::isnan(h[t])) << t;
  cudaFree(d);
}

// Two half-warps shuffle independently with their own masks.
__global__ void HalfWarpKernel(int* out) {
  const int lane = threadIdx.x % 32;
  const unsigned mask = lane < 16 ? 0x0000ffffu : 0xffff0000u;
  int v = lane;
  for (int o = 8; o > 0; o >>= 1) v += __shfl_xor_sync(mask, v, o);
  out[threadIdx.x] = v;
}

TEST(CudaSimulation, PartialMasks) {
  int* d = DeviceArray<int>(32);
  LAUNCH(HalfWarpKernel, 1, 32, 0, nullptr)(d);
  const std::vector<int> h = ToHost(d, 32);
  for (int t = 0; t < 16; ++t) EXPECT_EQ(h[t], 120);             // 0..15
  for (int t = 16; t < 32; ++t) EXPECT_EQ(h[t], 120 + 16 * 16);  // 16..31
  cudaFree(d);
}

// Double shuffles (8 bytes) and shuffles inside a block-wide reduction in
// which only warp 0 does the second round (the case the issue names).
__global__ void BlockSumKernel(double* out, const float* x, int n) {
  __shared__ double partial[32];
  double v = 0.0;
  for (int i = threadIdx.x; i < n; i += blockDim.x) v += x[i];
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  if (threadIdx.x % 32 == 0) partial[threadIdx.x / 32] = v;
  __syncthreads();
  if (threadIdx.x < 32) {
    double t = threadIdx.x < blockDim.x / 32 ? partial[threadIdx.x] : 0.0;
    for (int o = 16; o > 0; o >>= 1) t += __shfl_xor_sync(0xffffffffu, t, o);
    if (threadIdx.x == 0) out[blockIdx.x] = t;
  }
}

TEST(CudaSimulation, BlockReductionWithWarpZeroOnly) {
  const int n = 10007;
  std::vector<float> h(n);
  for (int i = 0; i < n; ++i) h[i] = static_cast<float>(i % 97) * 0.25f;
  const double expected = std::accumulate(h.begin(), h.end(), 0.0);
  float* x = DeviceArray<float>(n);
  double* out = DeviceArray<double>(8);
  cudaMemcpy(x, h.data(), n * 4, cudaMemcpyHostToDevice);
  for (int threads : {32, 64, 256, 1024}) {
    LAUNCH(BlockSumKernel, 8, threads, 0, nullptr)(out, x, n);
    for (double v : ToHost(out, 8)) EXPECT_EQ(v, expected) << threads;
  }
  cudaFree(x);
  cudaFree(out);
}

// Dynamic shared memory starts poisoned (NaN), and is per block.
__global__ void DynamicSharedKernel(float* out) {
  float* s = DynamicShared<float>();
  if (threadIdx.x == 0) out[blockIdx.x * 2] = s[blockDim.x - 1];
  __syncthreads();
  s[threadIdx.x] = static_cast<float>(blockIdx.x);
  __syncthreads();
  if (threadIdx.x == 0) out[blockIdx.x * 2 + 1] = s[blockDim.x - 1];
}

TEST(CudaSimulation, DynamicSharedMemory) {
  float* d = DeviceArray<float>(16);
  LAUNCH(DynamicSharedKernel, 8, 64, 64 * sizeof(float), nullptr)(d);
  const std::vector<float> h = ToHost(d, 16);
  for (int b = 0; b < 8; ++b) {
    EXPECT_TRUE(std::isnan(h[2 * b]));
    EXPECT_EQ(h[2 * b + 1], static_cast<float>(b));
  }
  cudaFree(d);
}

__global__ void EmptyKernel() {}

TEST(CudaSimulation, LaunchLimits) {
  LAUNCH(EmptyKernel, 1, 2048, 0, nullptr)();
  EXPECT_EQ(cudaGetLastError(), cudaErrorInvalidConfiguration);
  LAUNCH(EmptyKernel, dim3(1, 70000), 32, 0, nullptr)();
  EXPECT_EQ(cudaGetLastError(), cudaErrorInvalidConfiguration);
  LAUNCH(EmptyKernel, 0, 32, 0, nullptr)();
  EXPECT_EQ(cudaGetLastError(), cudaErrorInvalidConfiguration);
  // Above 48 KiB of dynamic shared memory needs the opt-in attribute.
  LAUNCH(DynamicSharedKernel, 1, 32, 64 << 10, nullptr)(nullptr);
  EXPECT_EQ(cudaGetLastError(), cudaErrorInvalidValue);
  EXPECT_EQ(cudaFuncSetAttribute(DynamicSharedKernel,
                                 cudaFuncAttributeMaxDynamicSharedMemorySize,
                                 300 << 10),
            cudaErrorInvalidValue);
  cudaGetLastError();
  ASSERT_EQ(cudaFuncSetAttribute(DynamicSharedKernel,
                                 cudaFuncAttributeMaxDynamicSharedMemorySize,
                                 64 << 10),
            cudaSuccess);
  float* d = DeviceArray<float>(2);
  LAUNCH(DynamicSharedKernel, 1, 32, 64 << 10, nullptr)(d);
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);
  EXPECT_EQ(ToHost(d, 2)[1], 0.0f);
  cudaFree(d);
}

// C = A B for one 16x16x16 tile on tensor cores, A row-major and B
// column-major in shared memory, as the attention kernels load them.
__global__ void WmmaKernel(float* c, const __nv_bfloat16* a,
                           const __nv_bfloat16* b, int ldc) {
  using namespace nvcuda;
  // Dynamic shared memory: a static __shared__ array of __nv_bfloat16 (whose
  // host default constructor is not trivial) gets a thread-local
  // initialization guard that every fiber of the block touches.
  __nv_bfloat16* as = DynamicShared<__nv_bfloat16>();
  __nv_bfloat16* bs = as + 16 * 24;
  for (int i = threadIdx.x; i < 256; i += 32) {
    as[i / 16 * 24 + i % 16] = a[i];
    bs[i / 16 * 24 + i % 16] = b[i];
  }
  __syncwarp();
  wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> fa;
  wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::col_major> fb;
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
  wmma::fill_fragment(acc, 1.0f);
  wmma::load_matrix_sync(fa, as, 24);
  wmma::load_matrix_sync(fb, bs, 24);
  wmma::mma_sync(acc, fa, fb, acc);
  for (int e = 0; e < acc.num_elements; ++e) acc.x[e] *= 2.0f;
  wmma::store_matrix_sync(c, acc, ldc, wmma::mem_col_major);
}

TEST(CudaSimulation, Wmma) {
  std::vector<__nv_bfloat16> a(256), b(256);
  for (int i = 0; i < 256; ++i) {
    a[i] = __float2bfloat16_rn(static_cast<float>(i % 13) - 6.0f);
    b[i] = __float2bfloat16_rn(static_cast<float>(i % 7) * 0.5f);
  }
  auto* da = DeviceArray<__nv_bfloat16>(256);
  auto* db = DeviceArray<__nv_bfloat16>(256);
  float* dc = DeviceArray<float>(20 * 16);
  cudaMemcpy(da, a.data(), 512, cudaMemcpyHostToDevice);
  cudaMemcpy(db, b.data(), 512, cudaMemcpyHostToDevice);
  LAUNCH(WmmaKernel, 1, 32, 2 * 16 * 24 * 2, nullptr)(dc, da, db, 20);
  const std::vector<float> c = ToHost(dc, 20 * 16);
  for (int r = 0; r < 16; ++r) {
    for (int col = 0; col < 16; ++col) {
      float want = 0.0f;
      // b is column-major: element (k, col) at col * 16 + k.
      for (int k = 0; k < 16; ++k) {
        want +=
            __bfloat162float(a[r * 16 + k]) * __bfloat162float(b[col * 16 + k]);
      }
      EXPECT_EQ(c[col * 20 + r], 2.0f * (want + 1.0f)) << r << "," << col;
    }
  }
  cudaFree(da);
  cudaFree(db);
  cudaFree(dc);
}

__global__ void FillKernel(float* out, float v, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) out[i] = v;
}

TEST(CudaSimulation, StreamsRunWhenSynchronized) {
  cudaStream_t s;
  ASSERT_EQ(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), cudaSuccess);
  float* d = DeviceArray<float>(100);
  float* pinned = nullptr;
  ASSERT_EQ(cudaMallocHost(reinterpret_cast<void**>(&pinned), 400),
            cudaSuccess);
  pinned[0] = -1.0f;
  LAUNCH(FillKernel, 1, 128, 0, s)(d, 7.0f, 100);
  ASSERT_EQ(cudaMemcpyAsync(pinned, d, 400, cudaMemcpyDeviceToHost, s),
            cudaSuccess);
  // Page-locked destination: nothing has run until the host waits.
  EXPECT_EQ(pinned[0], -1.0f);
  cudaEvent_t e;
  cudaEventCreateWithFlags(&e, cudaEventDisableTiming);
  cudaEventRecord(e, s);
  EXPECT_EQ(cudaEventQuery(e), cudaErrorNotReady);
  cudaEventSynchronize(e);
  EXPECT_EQ(pinned[99], 7.0f);
  EXPECT_EQ(cudaEventQuery(e), cudaSuccess);

  // Pageable source: staged at the call, so later host writes do not leak
  // into the copy.
  std::vector<float> src(100, 3.0f);
  cudaMemcpyAsync(d, src.data(), 400, cudaMemcpyHostToDevice, s);
  src.assign(100, 5.0f);
  // Pageable destination: complete when the call returns.
  std::vector<float> back(100, 0.0f);
  cudaMemcpyAsync(back.data(), d, 400, cudaMemcpyDeviceToHost, s);
  EXPECT_EQ(back[42], 3.0f);

  // A second stream waits for the first through an event.
  cudaStream_t s2;
  cudaStreamCreateWithFlags(&s2, cudaStreamNonBlocking);
  LAUNCH(FillKernel, 1, 128, 0, s)(d, 9.0f, 100);
  cudaEventRecord(e, s);
  cudaStreamWaitEvent(s2, e, 0);
  cudaMemcpyAsync(pinned, d, 400, cudaMemcpyDeviceToHost, s2);
  cudaStreamSynchronize(s2);
  EXPECT_EQ(pinned[5], 9.0f);

  cudaEventDestroy(e);
  cudaStreamDestroy(s2);
  cudaStreamDestroy(s);
  cudaFreeHost(pinned);
  cudaFree(d);
}

TEST(CudaSimulation, CopiesAreChecked) {
  float* d = DeviceArray<float>(10);
  std::vector<float> h(20);
  EXPECT_EQ(cudaMemcpy(d, h.data(), 80, cudaMemcpyHostToDevice),
            cudaErrorInvalidValue);
  EXPECT_EQ(cudaMemcpy(h.data(), d + 5, 24, cudaMemcpyDeviceToHost),
            cudaErrorInvalidValue);
  EXPECT_EQ(cudaFree(d + 1), cudaErrorInvalidValue);
  cudaGetLastError();
  cudaFree(d);
  cudaDeviceProp prop;
  ASSERT_EQ(cudaGetDeviceProperties(&prop, 0), cudaSuccess);
  EXPECT_STREQ(prop.name, kDeviceName);
  EXPECT_EQ(cudaSetDevice(99), cudaErrorInvalidDevice);
  cudaGetLastError();
}

// D = alpha op(A) op(B) + beta C + bias, column-major, computed naively.
void ReferenceGemm(bool ta, bool tb, int m, int n, int k, const float* a,
                   int lda, const float* b, int ldb, float beta,
                   const float* bias, std::vector<float>& d, int ldd) {
  for (int j = 0; j < n; ++j) {
    for (int i = 0; i < m; ++i) {
      double acc = 0.0;
      for (int p = 0; p < k; ++p) {
        const float av = ta ? a[p + i * lda] : a[i + p * lda];
        const float bv = tb ? b[j + p * ldb] : b[p + j * ldb];
        acc += static_cast<double>(av) * bv;
      }
      float v = static_cast<float>(acc) + beta * d[i + j * ldd];
      if (bias != nullptr) v += bias[i];
      d[i + j * ldd] = v;
    }
  }
}

TEST(CudaSimulation, CublasLtLayouts) {
  cublasLtHandle_t lt;
  ASSERT_EQ(cublasLtCreate(&lt), CUBLAS_STATUS_SUCCESS);
  for (int ta = 0; ta < 2; ++ta) {
    for (int tb = 0; tb < 2; ++tb) {
      const int m = 7, n = 5, k = 9;
      const int lda = (ta ? k : m) + 3, ldb = (tb ? n : k) + 2, ldd = m + 1;
      std::vector<float> a(lda * (ta ? m : k)), b(ldb * (tb ? k : n)),
          d(ldd * n), bias(m);
      for (size_t i = 0; i < a.size(); ++i) a[i] = std::sin(0.3f * i);
      for (size_t i = 0; i < b.size(); ++i) b[i] = std::cos(0.7f * i);
      for (size_t i = 0; i < d.size(); ++i) d[i] = 0.01f * i;
      for (int i = 0; i < m; ++i) bias[i] = i - 3.0f;
      float* da = DeviceArray<float>(a.size());
      float* db = DeviceArray<float>(b.size());
      float* dd = DeviceArray<float>(d.size());
      float* dbias = DeviceArray<float>(m);
      cudaMemcpy(da, a.data(), a.size() * 4, cudaMemcpyHostToDevice);
      cudaMemcpy(db, b.data(), b.size() * 4, cudaMemcpyHostToDevice);
      cudaMemcpy(dd, d.data(), d.size() * 4, cudaMemcpyHostToDevice);
      cudaMemcpy(dbias, bias.data(), m * 4, cudaMemcpyHostToDevice);

      cublasLtMatmulDesc_t op;
      cublasLtMatmulDescCreate(&op, CUBLAS_COMPUTE_32F, CUDA_R_32F);
      const int32_t opa = ta ? CUBLAS_OP_T : CUBLAS_OP_N;
      const int32_t opb = tb ? CUBLAS_OP_T : CUBLAS_OP_N;
      cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSA, &opa, 4);
      cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSB, &opb, 4);
      const uint32_t epi = CUBLASLT_EPILOGUE_BIAS;
      cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi,
                                     4);
      cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_BIAS_POINTER,
                                     &dbias, sizeof(dbias));
      cublasLtMatrixLayout_t la, lb, ld;
      cublasLtMatrixLayoutCreate(&la, CUDA_R_32F, ta ? k : m, ta ? m : k, lda);
      cublasLtMatrixLayoutCreate(&lb, CUDA_R_32F, tb ? n : k, tb ? k : n, ldb);
      cublasLtMatrixLayoutCreate(&ld, CUDA_R_32F, m, n, ldd);
      const float alpha = 1.0f, beta = 0.5f;
      ASSERT_EQ(cublasLtMatmul(lt, op, &alpha, da, la, db, lb, &beta, dd, ld,
                               dd, ld, nullptr, nullptr, 0, nullptr),
                CUBLAS_STATUS_SUCCESS);
      ReferenceGemm(ta, tb, m, n, k, a.data(), lda, b.data(), ldb, beta,
                    bias.data(), d, ldd);
      const std::vector<float> got = ToHost(dd, d.size());
      for (int j = 0; j < n; ++j) {
        for (int i = 0; i < m; ++i) {
          EXPECT_NEAR(got[i + j * ldd], d[i + j * ldd], 1e-5f)
              << "ta " << ta << " tb " << tb << " at " << i << "," << j;
        }
      }
      // A layout that disagrees with D's shape is refused.
      cublasLtMatrixLayout_t bad;
      cublasLtMatrixLayoutCreate(&bad, CUDA_R_32F, m + 1, n, ldd + 1);
      EXPECT_EQ(cublasLtMatmul(lt, op, &alpha, da, la, db, lb, &beta, dd, bad,
                               dd, ld, nullptr, nullptr, 0, nullptr),
                CUBLAS_STATUS_INVALID_VALUE);
      cublasLtMatrixLayoutDestroy(bad);
      cublasLtMatrixLayoutDestroy(la);
      cublasLtMatrixLayoutDestroy(lb);
      cublasLtMatrixLayoutDestroy(ld);
      cublasLtMatmulDescDestroy(op);
      cudaFree(da);
      cudaFree(db);
      cudaFree(dd);
      cudaFree(dbias);
    }
  }
  cublasLtDestroy(lt);
}

// Thread 0 waits at the block barrier while the rest of warp 0 waits at a
// warp barrier that needs thread 0: a hang on the GPU, a report here.
__global__ void DeadlockKernel() {
  if (threadIdx.x == 0) {
    __syncthreads();
  } else {
    __syncwarp();
  }
}

__global__ void DivergentBarrierKernel() {
  if (threadIdx.x < 64) {
    __syncthreads();
  } else {
    __syncthreads();
  }
}

__global__ void LaneOutsideMaskKernel(int* out) {
  out[threadIdx.x] = __shfl_sync(0x0000ffffu, 1, 0);
}

__global__ void ReadPastEndKernel(float* out, const float* in, int n) {
  out[0] = in[n + 1024];
}

// Device memory is not host memory on a GPU: a host load faults here too,
// and so does a kernel reading well past an allocation's end (the guard
// page). AddressSanitizer builds watch heap blocks instead.
TEST(CudaSimulationDeathTest, HostCannotTouchDeviceMemory) {
#if defined(__SANITIZE_ADDRESS__)
  GTEST_SKIP() << "device memory is heap memory under AddressSanitizer";
#endif
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_DEATH(
      {
        float* d = DeviceArray<float>(100);
        cudaMemset(d, 0, 400);
        volatile float x = d[3];
        (void)x;
      },
      "host access to device memory at 0x[0-9a-f]+, in or after the "
      "cudaMalloc allocation of 400 bytes");
  EXPECT_DEATH(
      {
        float* d = DeviceArray<float>(100);
        LAUNCH(ReadPastEndKernel, 1, 1, 0, nullptr)(d, d, 100);
        cudaDeviceSynchronize();
      },
      "access past the end of device memory");
}

TEST(CudaSimulationDeathTest, ReportsMisuse) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_DEATH(
      {
        LAUNCH(DeadlockKernel, 1, 64, 0, nullptr)();
        cudaDeviceSynchronize();
      },
      "deadlock in kernel DeadlockKernel, block \\(0,0,0\\)(.|\n)*thread 0: "
      "waiting at __syncthreads at .*sim_test.cc(.|\n)*thread 1-31: waiting "
      "at __syncwarp \\(mask 0xffffffff\\)");
  EXPECT_DEATH(
      {
        LAUNCH(DivergentBarrierKernel, 1, 128, 0, nullptr)();
        cudaDeviceSynchronize();
      },
      "divergent __syncthreads");
  EXPECT_DEATH(
      {
        int* d = DeviceArray<int>(32);
        LAUNCH(LaneOutsideMaskKernel, 1, 32, 0, nullptr)(d);
        cudaDeviceSynchronize();
      },
      "called by lane 16, which is not in the mask");
}

}  // namespace
}  // namespace prefopt::cudasim
