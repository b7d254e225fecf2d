// SparsePO's masks and coefficients on host memory (docs/objectives.md §2,
// §7): the CPU backends' Backend::SparsePoMaskForward/Backward, MapoMask and
// SparsePoCoefficients. The learned mask network's rows (forward) and layers
// (backward) are split over OpenMP threads; results do not depend on the
// thread count.
#ifndef PREFOPT_KERNELS_CPU_SPARSEPO_HOST_H_
#define PREFOPT_KERNELS_CPU_SPARSEPO_HOST_H_

#include <vector>

#include "kernels/backend.h"

namespace prefopt::kernels::cpu {

// Buffers the functions below reuse, grown to the largest call, so that the
// steady-state step allocates nothing. One caller at a time.
struct SparsePoScratch {
  // Per (layer, row): the pre-activation a = w_lᵀ LN(h) + b_l and the row's
  // normalization statistics.
  struct RowStats {
    double a;
    double mean;
    double rstd;
  };
  std::vector<RowStats> stats;
  std::vector<double> folded_w, folded_offset;
  std::vector<double> row_grad, dc, db, x, dgamma, dshift;
  std::vector<double> mapo;
};

void SparsePoMaskForward(float* mask, const float* hidden, int rows,
                         const float* params, const SparsePoMaskNetShape& shape,
                         SparsePoScratch* scratch);
void SparsePoMaskBackward(float* grads, const float* dmask, const float* hidden,
                          int rows, const float* params,
                          const SparsePoMaskNetShape& shape,
                          SparsePoScratch* scratch);
void MapoMask(float* mask, const float* scores, int rows,
              const MapoGroup* map_groups, int num_maps,
              const MapoGroup* groups, int num_groups, const SeqSpan* spans,
              int num_spans, SparsePoScratch* scratch);
void SparsePoCoefficients(const SparsePoRowOutputs& out, double* metrics,
                          const SparsePoRowInputs& in, const SeqSpan* spans,
                          int num_pairs, const SparsePoParams& params);

}  // namespace prefopt::kernels::cpu

#endif  // PREFOPT_KERNELS_CPU_SPARSEPO_HOST_H_
