// cuBLASLt for the CUDA simulation: the matmul path CudaBackend uses, with
// cuBLASLt's semantics (column-major layouts with leading dimensions, the
// transposes, alpha/beta with C not read when beta is 0, the bias epilogue
// broadcasting bias[m] along D's columns, bf16 or fp32 operands with fp32
// accumulation) and its argument checks, so the backend's layout plumbing
// is what a test exercises. Descriptors are validated when the heuristic is
// queried and again at the call; a mismatch returns
// CUBLAS_STATUS_INVALID_VALUE or NOT_SUPPORTED with the reason on stderr.
#include <cublasLt.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "kernels/cuda/sim/runtime.h"

struct cublasLtContext {};

namespace prefopt::cudasim {
namespace {

struct MatmulDesc {
  cublasComputeType_t compute;
  cudaDataType_t scale;
  int32_t trans_a = CUBLAS_OP_N;
  int32_t trans_b = CUBLAS_OP_N;
  uint32_t epilogue = CUBLASLT_EPILOGUE_DEFAULT;
  const void* bias = nullptr;
  int32_t bias_type = CUDA_R_32F;
};

struct Layout {
  cudaDataType_t type;
  uint64_t rows, cols;
  int64_t ld;
};

struct Preference {
  uint64_t max_workspace = 0;
};

MatmulDesc* Of(cublasLtMatmulDesc_t d) {
  return reinterpret_cast<MatmulDesc*>(d);
}
Layout* Of(cublasLtMatrixLayout_t l) { return reinterpret_cast<Layout*>(l); }

cublasStatus_t Reject(cublasStatus_t status, const std::string& why) {
  std::fprintf(stderr, "cudasim cuBLASLt: %s\n", why.c_str());
  return status;
}

template <typename T>
cublasStatus_t SetValue(T* field, const void* buf, size_t size,
                        const char* name) {
  if (buf == nullptr || size != sizeof(T)) {
    return Reject(CUBLAS_STATUS_INVALID_VALUE,
                  std::string("attribute ") + name + " set with " +
                      std::to_string(size) + " bytes, expected " +
                      std::to_string(sizeof(T)));
  }
  std::memcpy(field, buf, sizeof(T));
  return CUBLAS_STATUS_SUCCESS;
}

// The problem a descriptor set describes, after cuBLASLt's checks.
struct Problem {
  bool trans_a, trans_b, bf16, bias;
  uint64_t m, n, k;
  int64_t lda, ldb, ldc, ldd;
};

cublasStatus_t Check(const MatmulDesc& op, const Layout& a, const Layout& b,
                     const Layout& c, const Layout& d, Problem* p) {
  if (op.compute != CUBLAS_COMPUTE_32F || op.scale != CUDA_R_32F) {
    return Reject(CUBLAS_STATUS_NOT_SUPPORTED,
                  "only CUBLAS_COMPUTE_32F with fp32 scale is simulated");
  }
  if (a.type != b.type || (a.type != CUDA_R_32F && a.type != CUDA_R_16BF)) {
    return Reject(CUBLAS_STATUS_NOT_SUPPORTED,
                  "A and B must both be fp32 or both bf16");
  }
  if (c.type != CUDA_R_32F || d.type != CUDA_R_32F) {
    return Reject(CUBLAS_STATUS_NOT_SUPPORTED, "C and D must be fp32");
  }
  if ((op.trans_a != CUBLAS_OP_N && op.trans_a != CUBLAS_OP_T) ||
      (op.trans_b != CUBLAS_OP_N && op.trans_b != CUBLAS_OP_T)) {
    return Reject(CUBLAS_STATUS_NOT_SUPPORTED, "transposes must be N or T");
  }
  p->trans_a = op.trans_a == CUBLAS_OP_T;
  p->trans_b = op.trans_b == CUBLAS_OP_T;
  p->bf16 = a.type == CUDA_R_16BF;
  p->m = d.rows;
  p->n = d.cols;
  p->k = p->trans_a ? a.rows : a.cols;
  const uint64_t a_m = p->trans_a ? a.cols : a.rows;
  const uint64_t b_k = p->trans_b ? b.cols : b.rows;
  const uint64_t b_n = p->trans_b ? b.rows : b.cols;
  if (a_m != p->m || b_k != p->k || b_n != p->n || c.rows != d.rows ||
      c.cols != d.cols) {
    return Reject(CUBLAS_STATUS_INVALID_VALUE,
                  "shapes do not agree: op(A) is " + std::to_string(a_m) + "x" +
                      std::to_string(p->k) + ", op(B) " + std::to_string(b_k) +
                      "x" + std::to_string(b_n) + ", C " +
                      std::to_string(c.rows) + "x" + std::to_string(c.cols) +
                      ", D " + std::to_string(d.rows) + "x" +
                      std::to_string(d.cols));
  }
  for (const Layout* l : {&a, &b, &c, &d}) {
    if (l->ld < static_cast<int64_t>(std::max<uint64_t>(l->rows, 1))) {
      return Reject(CUBLAS_STATUS_INVALID_VALUE,
                    "leading dimension " + std::to_string(l->ld) +
                        " below the row count " + std::to_string(l->rows) +
                        " of a column-major matrix");
    }
  }
  p->lda = a.ld;
  p->ldb = b.ld;
  p->ldc = c.ld;
  p->ldd = d.ld;
  if (op.epilogue != CUBLASLT_EPILOGUE_DEFAULT &&
      op.epilogue != CUBLASLT_EPILOGUE_BIAS) {
    return Reject(CUBLAS_STATUS_NOT_SUPPORTED,
                  "only the default and BIAS epilogues are simulated");
  }
  p->bias = op.epilogue == CUBLASLT_EPILOGUE_BIAS;
  if (p->bias && op.bias_type != CUDA_R_32F) {
    return Reject(CUBLAS_STATUS_NOT_SUPPORTED, "the bias must be fp32");
  }
  return CUBLAS_STATUS_SUCCESS;
}

// Bytes spanned by a column-major rows x cols matrix with leading dimension
// ld.
size_t Span(uint64_t rows, uint64_t cols, int64_t ld, size_t elem) {
  if (rows == 0 || cols == 0) return 0;
  return ((cols - 1) * static_cast<uint64_t>(ld) + rows) * elem;
}

float Bf16ToFloat(uint16_t v) {
  const uint32_t bits = static_cast<uint32_t>(v) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}

// op(X) as a dense row-per-output matrix: rows x depth floats, so each dot
// product reads contiguous memory.
std::vector<float> Gather(const void* x, bool bf16, bool trans, int64_t ld,
                          uint64_t rows, uint64_t depth) {
  std::vector<float> out(rows * depth);
  for (uint64_t r = 0; r < rows; ++r) {
    for (uint64_t e = 0; e < depth; ++e) {
      // Not transposed, op(X)[r][e] is column e's row r; transposed, the
      // reverse.
      const uint64_t i = trans ? r * ld + e : e * ld + r;
      out[r * depth + e] = bf16
                               ? Bf16ToFloat(static_cast<const uint16_t*>(x)[i])
                               : static_cast<const float*>(x)[i];
    }
  }
  return out;
}

void RunMatmul(const Problem& p, float alpha, float beta, const void* a,
               const void* b, const float* c, float* d, const float* bias) {
  // Rows of op(A) (m x k) and columns of op(B) (k x n), both k long.
  const std::vector<float> at = Gather(a, p.bf16, p.trans_a, p.lda, p.m, p.k);
  const std::vector<float> bt = Gather(b, p.bf16, !p.trans_b, p.ldb, p.n, p.k);
  for (uint64_t j = 0; j < p.n; ++j) {
    for (uint64_t i = 0; i < p.m; ++i) {
      float acc = 0.0f;
      const float* x = &at[i * p.k];
      const float* y = &bt[j * p.k];
      for (uint64_t e = 0; e < p.k; ++e) acc = std::fma(x[e], y[e], acc);
      float v = alpha * acc;
      if (beta != 0.0f) v += beta * c[i + j * p.ldc];
      if (bias != nullptr) v += bias[i];
      d[i + j * p.ldd] = v;
    }
  }
}

}  // namespace
}  // namespace prefopt::cudasim

using prefopt::cudasim::Layout;
using prefopt::cudasim::MatmulDesc;
using prefopt::cudasim::Of;
using prefopt::cudasim::Preference;
using prefopt::cudasim::Problem;
using prefopt::cudasim::Reject;
using prefopt::cudasim::SetValue;

cublasStatus_t cublasLtCreate(cublasLtHandle_t* handle) {
  *handle = new cublasLtContext();
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtDestroy(cublasLtHandle_t handle) {
  delete handle;
  return CUBLAS_STATUS_SUCCESS;
}

const char* cublasLtGetStatusString(cublasStatus_t status) {
  switch (status) {
    case CUBLAS_STATUS_SUCCESS:
      return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_INVALID_VALUE:
      return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_NOT_SUPPORTED:
      return "CUBLAS_STATUS_NOT_SUPPORTED";
    case CUBLAS_STATUS_EXECUTION_FAILED:
      return "CUBLAS_STATUS_EXECUTION_FAILED";
    default:
      return "CUBLAS_STATUS_UNKNOWN";
  }
}

cublasStatus_t cublasLtMatmulDescCreate(cublasLtMatmulDesc_t* desc,
                                        cublasComputeType_t compute,
                                        cudaDataType_t scale) {
  auto* d = new MatmulDesc();
  d->compute = compute;
  d->scale = scale;
  *desc = reinterpret_cast<cublasLtMatmulDesc_t>(d);
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulDescDestroy(cublasLtMatmulDesc_t desc) {
  delete Of(desc);
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulDescSetAttribute(
    cublasLtMatmulDesc_t desc, cublasLtMatmulDescAttributes_t attr,
    const void* buf, size_t size) {
  MatmulDesc* d = Of(desc);
  switch (attr) {
    case CUBLASLT_MATMUL_DESC_TRANSA:
      return SetValue(&d->trans_a, buf, size, "TRANSA");
    case CUBLASLT_MATMUL_DESC_TRANSB:
      return SetValue(&d->trans_b, buf, size, "TRANSB");
    case CUBLASLT_MATMUL_DESC_EPILOGUE:
      return SetValue(&d->epilogue, buf, size, "EPILOGUE");
    case CUBLASLT_MATMUL_DESC_BIAS_POINTER:
      return SetValue(&d->bias, buf, size, "BIAS_POINTER");
    case CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE:
      return SetValue(&d->bias_type, buf, size, "BIAS_DATA_TYPE");
    default:
      return Reject(
          CUBLAS_STATUS_NOT_SUPPORTED,
          "matmul attribute " + std::to_string(attr) + " is not simulated");
  }
}

cublasStatus_t cublasLtMatrixLayoutCreate(cublasLtMatrixLayout_t* layout,
                                          cudaDataType type, uint64_t rows,
                                          uint64_t cols, int64_t ld) {
  *layout = reinterpret_cast<cublasLtMatrixLayout_t>(
      new Layout{type, rows, cols, ld});
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatrixLayoutDestroy(cublasLtMatrixLayout_t layout) {
  delete Of(layout);
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulPreferenceCreate(
    cublasLtMatmulPreference_t* pref) {
  *pref = reinterpret_cast<cublasLtMatmulPreference_t>(new Preference());
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulPreferenceDestroy(
    cublasLtMatmulPreference_t pref) {
  delete reinterpret_cast<Preference*>(pref);
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulPreferenceSetAttribute(
    cublasLtMatmulPreference_t pref, cublasLtMatmulPreferenceAttributes_t attr,
    const void* buf, size_t size) {
  auto* p = reinterpret_cast<Preference*>(pref);
  switch (attr) {
    case CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES:
      return SetValue(&p->max_workspace, buf, size, "MAX_WORKSPACE_BYTES");
    case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES:
    case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES:
    case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES:
    case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES: {
      // The simulated kernels take any alignment; the size is still checked.
      uint32_t alignment = 0;
      return SetValue(&alignment, buf, size, "MIN_ALIGNMENT");
    }
    default:
      return Reject(
          CUBLAS_STATUS_NOT_SUPPORTED,
          "preference attribute " + std::to_string(attr) + " is not simulated");
  }
}

cublasStatus_t cublasLtMatmulAlgoGetHeuristic(
    cublasLtHandle_t /*handle*/, cublasLtMatmulDesc_t op,
    cublasLtMatrixLayout_t a, cublasLtMatrixLayout_t b,
    cublasLtMatrixLayout_t c, cublasLtMatrixLayout_t d,
    cublasLtMatmulPreference_t /*pref*/, int requested,
    cublasLtMatmulHeuristicResult_t results[], int* count) {
  *count = 0;
  if (requested < 1) {
    return Reject(CUBLAS_STATUS_INVALID_VALUE, "requestedAlgoCount < 1");
  }
  Problem p;
  if (const cublasStatus_t s =
          Check(*Of(op), *Of(a), *Of(b), *Of(c), *Of(d), &p);
      s != CUBLAS_STATUS_SUCCESS) {
    return s;
  }
  std::memset(&results[0], 0, sizeof(results[0]));
  results[0].state = CUBLAS_STATUS_SUCCESS;
  results[0].wavesCount = 1.0f;
  *count = 1;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmul(
    cublasLtHandle_t /*handle*/, cublasLtMatmulDesc_t op, const void* alpha,
    const void* a, cublasLtMatrixLayout_t a_layout, const void* b,
    cublasLtMatrixLayout_t b_layout, const void* beta, const void* c,
    cublasLtMatrixLayout_t c_layout, void* d, cublasLtMatrixLayout_t d_layout,
    const cublasLtMatmulAlgo_t* /*algo*/, void* /*workspace*/,
    size_t /*workspace_bytes*/, cudaStream_t stream) {
  Problem p;
  const MatmulDesc& desc = *Of(op);
  if (const cublasStatus_t s = Check(desc, *Of(a_layout), *Of(b_layout),
                                     *Of(c_layout), *Of(d_layout), &p);
      s != CUBLAS_STATUS_SUCCESS) {
    return s;
  }
  if (p.m == 0 || p.n == 0) return CUBLAS_STATUS_SUCCESS;
  const float alpha_v = *static_cast<const float*>(alpha);
  const float beta_v = *static_cast<const float*>(beta);
  const size_t elem = p.bf16 ? 2 : 4;
  struct Operand {
    const char* name;
    const void* ptr;
    size_t bytes;
  };
  const Operand operands[] = {
      {"A", a,
       prefopt::cudasim::Span(p.trans_a ? p.k : p.m, p.trans_a ? p.m : p.k,
                              p.lda, elem)},
      {"B", b,
       prefopt::cudasim::Span(p.trans_b ? p.n : p.k, p.trans_b ? p.k : p.n,
                              p.ldb, elem)},
      {"C", beta_v != 0.0f ? c : nullptr,
       prefopt::cudasim::Span(p.m, p.n, p.ldc, 4)},
      {"D", d, prefopt::cudasim::Span(p.m, p.n, p.ldd, 4)},
      {"bias", p.bias ? desc.bias : nullptr, p.m * 4}};
  for (const Operand& o : operands) {
    if (o.ptr == nullptr && o.name[0] != 'C' && o.name[0] != 'b') {
      return Reject(CUBLAS_STATUS_INVALID_VALUE,
                    std::string(o.name) + " is null");
    }
    if (o.ptr != nullptr && o.bytes > 0 &&
        !prefopt::cudasim::IsDeviceRange(o.ptr, o.bytes)) {
      return Reject(CUBLAS_STATUS_INVALID_VALUE,
                    std::string("matrix ") + o.name + " (" +
                        std::to_string(o.bytes) +
                        " bytes as its layout says) is not inside a device "
                        "allocation");
    }
  }
  const float* bias = p.bias ? static_cast<const float*>(desc.bias) : nullptr;
  const float* c_f = static_cast<const float*>(c);
  float* d_f = static_cast<float*>(d);
  prefopt::cudasim::Enqueue(stream, [=] {
    prefopt::cudasim::RunMatmul(p, alpha_v, beta_v, a, b, c_f, d_f, bias);
  });
  return CUBLAS_STATUS_SUCCESS;
}
