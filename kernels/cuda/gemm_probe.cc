#include "kernels/cuda/gemm_probe.h"

#include <cublasLt.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <cstring>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace prefopt::kernels::cuda {
namespace {

absl::Status Check(cudaError_t err, const char* call) {
  if (err == cudaSuccess) return absl::OkStatus();
  return absl::UnavailableError(
      absl::StrCat(call, " failed: ", cudaGetErrorString(err)));
}

absl::Status Check(cublasStatus_t status, const char* call) {
  if (status == CUBLAS_STATUS_SUCCESS) return absl::OkStatus();
  return absl::InternalError(
      absl::StrCat(call, " failed: ", cublasLtGetStatusString(status)));
}

#define PREFOPT_RETURN_IF_ERROR(expr)           \
  do {                                          \
    const absl::Status s_ = Check(expr, #expr); \
    if (!s_.ok()) return s_;                    \
  } while (false)

// Everything the probe creates, released on every return path.
struct Resources {
  ~Resources() {
    if (start != nullptr) cudaEventDestroy(start);
    if (stop != nullptr) cudaEventDestroy(stop);
    if (pref != nullptr) cublasLtMatmulPreferenceDestroy(pref);
    for (cublasLtMatrixLayout_t l : {a_layout, b_layout, d_layout}) {
      if (l != nullptr) cublasLtMatrixLayoutDestroy(l);
    }
    if (op != nullptr) cublasLtMatmulDescDestroy(op);
    if (lt != nullptr) cublasLtDestroy(lt);
    for (void* p : {a, b, d, workspace}) cudaFree(p);
  }
  void *a = nullptr, *b = nullptr, *d = nullptr, *workspace = nullptr;
  cublasLtHandle_t lt = nullptr;
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t a_layout = nullptr, b_layout = nullptr,
                         d_layout = nullptr;
  cublasLtMatmulPreference_t pref = nullptr;
  cudaEvent_t start = nullptr, stop = nullptr;
};

// Uniform values in [-1, 1) from a xorshift generator: fast enough for
// hundreds of millions of values, and the GEMM does not care about quality.
std::vector<float> RandomValues(size_t n, uint32_t seed) {
  std::vector<float> v(n);
  uint32_t x = seed;
  for (float& f : v) {
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    f = static_cast<float>(x) * (2.0f / 4294967296.0f) - 1.0f;
  }
  return v;
}

// Round-to-nearest-even bf16 of finite values.
std::vector<uint16_t> ToBf16(const std::vector<float>& v) {
  std::vector<uint16_t> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) {
    uint32_t bits;
    std::memcpy(&bits, &v[i], sizeof(bits));
    bits += 0x7fffu + ((bits >> 16) & 1u);
    out[i] = static_cast<uint16_t>(bits >> 16);
  }
  return out;
}

absl::Status Upload(void** dst, const std::vector<float>& values, bool bf16) {
  if (bf16) {
    const std::vector<uint16_t> half = ToBf16(values);
    PREFOPT_RETURN_IF_ERROR(cudaMalloc(dst, half.size() * 2));
    PREFOPT_RETURN_IF_ERROR(
        cudaMemcpy(*dst, half.data(), half.size() * 2, cudaMemcpyHostToDevice));
  } else {
    PREFOPT_RETURN_IF_ERROR(cudaMalloc(dst, values.size() * 4));
    PREFOPT_RETURN_IF_ERROR(cudaMemcpy(*dst, values.data(), values.size() * 4,
                                       cudaMemcpyHostToDevice));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<double> MeasureCublasGemmTflops(GemmProbeType type, int m, int n,
                                               int k, int iters) {
  const bool bf16_inputs = type == GemmProbeType::kBf16;
  const cudaDataType_t ab = bf16_inputs ? CUDA_R_16BF : CUDA_R_32F;
  const cublasComputeType_t compute = type == GemmProbeType::kFp32FastBf16
                                          ? CUBLAS_COMPUTE_32F_FAST_16BF
                                          : CUBLAS_COMPUTE_32F;
  constexpr size_t kWorkspace = size_t{32} << 20;
  Resources r;
  PREFOPT_RETURN_IF_ERROR(cudaSetDevice(0));
  if (absl::Status s =
          Upload(&r.a, RandomValues(size_t{1} * k * m, 1), bf16_inputs);
      !s.ok()) {
    return s;
  }
  if (absl::Status s =
          Upload(&r.b, RandomValues(size_t{1} * k * n, 2), bf16_inputs);
      !s.ok()) {
    return s;
  }
  PREFOPT_RETURN_IF_ERROR(cudaMalloc(&r.d, size_t{4} * m * n));
  PREFOPT_RETURN_IF_ERROR(cudaMalloc(&r.workspace, kWorkspace));
  PREFOPT_RETURN_IF_ERROR(cublasLtCreate(&r.lt));
  PREFOPT_RETURN_IF_ERROR(cublasLtMatmulDescCreate(&r.op, compute, CUDA_R_32F));
  const int32_t trans = CUBLAS_OP_T;
  PREFOPT_RETURN_IF_ERROR(cublasLtMatmulDescSetAttribute(
      r.op, CUBLASLT_MATMUL_DESC_TRANSA, &trans, sizeof(trans)));
  PREFOPT_RETURN_IF_ERROR(cublasLtMatrixLayoutCreate(&r.a_layout, ab, k, m, k));
  PREFOPT_RETURN_IF_ERROR(cublasLtMatrixLayoutCreate(&r.b_layout, ab, k, n, k));
  PREFOPT_RETURN_IF_ERROR(
      cublasLtMatrixLayoutCreate(&r.d_layout, CUDA_R_32F, m, n, m));
  PREFOPT_RETURN_IF_ERROR(cublasLtMatmulPreferenceCreate(&r.pref));
  const uint64_t workspace = kWorkspace;
  PREFOPT_RETURN_IF_ERROR(cublasLtMatmulPreferenceSetAttribute(
      r.pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &workspace,
      sizeof(workspace)));
  cublasLtMatmulHeuristicResult_t result{};
  int count = 0;
  PREFOPT_RETURN_IF_ERROR(cublasLtMatmulAlgoGetHeuristic(
      r.lt, r.op, r.a_layout, r.b_layout, r.d_layout, r.d_layout, r.pref, 1,
      &result, &count));
  if (count == 0) {
    return absl::NotFoundError("cuBLASLt has no algorithm for this GEMM");
  }
  const float alpha = 1.0f, beta = 0.0f;
  auto multiply = [&] {
    return cublasLtMatmul(r.lt, r.op, &alpha, r.a, r.a_layout, r.b, r.b_layout,
                          &beta, r.d, r.d_layout, r.d, r.d_layout, &result.algo,
                          r.workspace, kWorkspace, nullptr);
  };
  for (int i = 0; i < 2; ++i) PREFOPT_RETURN_IF_ERROR(multiply());
  PREFOPT_RETURN_IF_ERROR(cudaEventCreate(&r.start));
  PREFOPT_RETURN_IF_ERROR(cudaEventCreate(&r.stop));
  PREFOPT_RETURN_IF_ERROR(cudaEventRecord(r.start, nullptr));
  for (int i = 0; i < iters; ++i) PREFOPT_RETURN_IF_ERROR(multiply());
  PREFOPT_RETURN_IF_ERROR(cudaEventRecord(r.stop, nullptr));
  PREFOPT_RETURN_IF_ERROR(cudaEventSynchronize(r.stop));
  float ms = 0.0f;
  PREFOPT_RETURN_IF_ERROR(cudaEventElapsedTime(&ms, r.start, r.stop));
  return 2.0 * m * n * static_cast<double>(k) * iters / (ms * 1e-3) * 1e-12;
}

}  // namespace prefopt::kernels::cuda
