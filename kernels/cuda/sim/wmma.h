// nvcuda::wmma for the CUDA simulation: the m16n16k16 fragments the kernels
// use (bf16 or half operands, float accumulators), with the GPU's alignment
// and leading-dimension rules checked.
//
// Which lane holds which element of a fragment is unspecified on the GPU; here
// lane l holds elements 8l..8l+7 of the tile in row-major order. Kernels that
// only load, store, fill, multiply and scale fragments element-wise do not
// depend on it and run unchanged; a kernel that reads fragment elements by
// position does depend on it and must stay GPU-only (say so in its test).
// mma_sync is warp-collective: the lanes exchange fragment pointers and each
// computes its own elements, with fp32 accumulation in k order.
#ifndef PREFOPT_KERNELS_CUDA_SIM_WMMA_H_
#define PREFOPT_KERNELS_CUDA_SIM_WMMA_H_

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <string>
#include <type_traits>

#include "kernels/cuda/sim/grid_runner.h"

namespace nvcuda::wmma {

struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

template <typename Use, int M, int N, int K, typename T, typename Layout = void>
class fragment {
 public:
  static_assert(M == 16 && N == 16 && K == 16,
                "the simulation implements the m16n16k16 shape");
  static constexpr int kRows = std::is_same_v<Use, matrix_b> ? K : M;
  static constexpr int kCols = std::is_same_v<Use, matrix_a> ? K : N;
  static constexpr int num_elements = kRows * kCols / 32;
  T x[num_elements];
};

namespace internal {

inline int Lane() { return ::prefopt::cudasim::CurrentThread().linear % 32; }

[[noreturn]] inline void Misuse(const char* what, const char* why,
                                ::prefopt::cudasim::SourceLocation where) {
  ::prefopt::cudasim::Fatal(std::string(what) + " at " + where.file + ":" +
                            std::to_string(where.line) + ": " + why);
}

// The GPU's rules: a 256-bit aligned pointer and a leading dimension that is
// a multiple of 16 bytes.
template <typename T>
void CheckPointer(const T* p, unsigned ldm, const char* what,
                  ::prefopt::cudasim::SourceLocation where) {
  if (reinterpret_cast<uintptr_t>(p) % 32 != 0) {
    Misuse(what, "pointer is not 32-byte aligned", where);
  }
  if ((ldm * sizeof(T)) % 16 != 0) {
    Misuse(what, "ldm is not a multiple of 16 bytes", where);
  }
}

inline float ToFloat(float v) { return v; }
inline float ToFloat(__nv_bfloat16 v) { return __bfloat162float(v); }
inline float ToFloat(__half v) { return __half2float(v); }

}  // namespace internal

template <typename Use, int M, int N, int K, typename T, typename Layout>
void fill_fragment(fragment<Use, M, N, K, T, Layout>& f, T value) {
  for (int e = 0; e < f.num_elements; ++e) f.x[e] = value;
}

// matrix_a / matrix_b: the layout is part of the fragment type.
template <typename Use, int M, int N, int K, typename T, typename Layout>
void load_matrix_sync(fragment<Use, M, N, K, T, Layout>& f, const T* p,
                      unsigned ldm,
                      ::prefopt::cudasim::SourceLocation where =
                          ::prefopt::cudasim::SourceLocation::Current()) {
  static_assert(!std::is_void_v<Layout>, "operand fragments need a layout");
  internal::CheckPointer(p, ldm, "wmma::load_matrix_sync", where);
  using F = fragment<Use, M, N, K, T, Layout>;
  const int base = internal::Lane() * F::num_elements;
  for (int e = 0; e < F::num_elements; ++e) {
    const int r = (base + e) / F::kCols, c = (base + e) % F::kCols;
    f.x[e] =
        std::is_same_v<Layout, row_major> ? p[r * ldm + c] : p[c * ldm + r];
  }
}

// Accumulators: the layout is an argument.
template <int M, int N, int K, typename T>
void load_matrix_sync(fragment<accumulator, M, N, K, T>& f, const T* p,
                      unsigned ldm, layout_t layout,
                      ::prefopt::cudasim::SourceLocation where =
                          ::prefopt::cudasim::SourceLocation::Current()) {
  internal::CheckPointer(p, ldm, "wmma::load_matrix_sync", where);
  using F = fragment<accumulator, M, N, K, T>;
  const int base = internal::Lane() * F::num_elements;
  for (int e = 0; e < F::num_elements; ++e) {
    const int r = (base + e) / F::kCols, c = (base + e) % F::kCols;
    f.x[e] = layout == mem_row_major ? p[r * ldm + c] : p[c * ldm + r];
  }
}

template <int M, int N, int K, typename T>
void store_matrix_sync(T* p, const fragment<accumulator, M, N, K, T>& f,
                       unsigned ldm, layout_t layout,
                       ::prefopt::cudasim::SourceLocation where =
                           ::prefopt::cudasim::SourceLocation::Current()) {
  internal::CheckPointer(p, ldm, "wmma::store_matrix_sync", where);
  using F = fragment<accumulator, M, N, K, T>;
  const int base = internal::Lane() * F::num_elements;
  for (int e = 0; e < F::num_elements; ++e) {
    const int r = (base + e) / F::kCols, c = (base + e) % F::kCols;
    (layout == mem_row_major ? p[r * ldm + c] : p[c * ldm + r]) = f.x[e];
  }
}

// d = a * b + c over the warp; d may be c.
template <int M, int N, int K, typename TA, typename LA, typename LB,
          typename TC>
void mma_sync(fragment<accumulator, M, N, K, TC>& d,
              const fragment<matrix_a, M, N, K, TA, LA>& a,
              const fragment<matrix_b, M, N, K, TA, LB>& b,
              const fragment<accumulator, M, N, K, TC>& c,
              ::prefopt::cudasim::SourceLocation where =
                  ::prefopt::cudasim::SourceLocation::Current()) {
  using FA = fragment<matrix_a, M, N, K, TA, LA>;
  using FB = fragment<matrix_b, M, N, K, TA, LB>;
  using FC = fragment<accumulator, M, N, K, TC>;
  struct Operands {
    const FA* a;
    const FB* b;
    const FC* c;
  };
  const Operands mine{&a, &b, &c};
  const void* lanes[32];
  ::prefopt::cudasim::WarpGather(&mine, lanes, "wmma::mma_sync", where);
  // Element `index` (row-major) of a tile: lane index / 8 holds it.
  auto at = [&lanes](auto member, int index) {
    const auto* frag = static_cast<const Operands*>(lanes[index / 8])->*member;
    return internal::ToFloat(frag->x[index % 8]);
  };
  const int base = internal::Lane() * FC::num_elements;
  TC out[FC::num_elements];
  for (int e = 0; e < FC::num_elements; ++e) {
    const int r = (base + e) / N, col = (base + e) % N;
    float acc = 0.0f;
    for (int k = 0; k < K; ++k) {
      acc += at(&Operands::a, r * K + k) * at(&Operands::b, k * N + col);
    }
    out[e] = static_cast<TC>(acc + at(&Operands::c, r * N + col));
  }
  // Every lane has read the operands before any lane overwrites d (which
  // may be its c).
  ::prefopt::cudasim::SyncWarp(0xffffffffu, where);
  for (int e = 0; e < FC::num_elements; ++e) d.x[e] = out[e];
}

}  // namespace nvcuda::wmma

#endif  // PREFOPT_KERNELS_CUDA_SIM_WMMA_H_
