// MaPO's activation-derived token masks for SparsePO (docs/objectives.md §2,
// "MaPO"): fixed masks computed from the frozen reference model's activations
// on the response tokens, with no parameters and no gradient.
//
// Each captured activation map A (rows × H) becomes a per-token score
// a_t = mean_h A_{t,h}, rescaled over the sequence's response tokens as the
// official code's "zn_rescale" mapping does: z-normalized with the tokens'
// mean and (unbiased) standard deviation, then min–max rescaled to [0, 1],
// where the standard deviation, minimum, maximum and their difference are
// rounded to half precision as the official code rounds them (so a score can
// land up to about 1e-3 outside [0, 1]). The maps of one group are averaged,
// and the mask is the mean of the selected groups' averages (one common mask).
#ifndef PREFOPT_TRAINER_OBJECTIVES_MAPO_MASKS_H_
#define PREFOPT_TRAINER_OBJECTIVES_MAPO_MASKS_H_

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "kernels/backend.h"

namespace prefopt::objectives {

// Which activations each group holds depends on the architecture
// (docs/objectives.md §2 lists them); SparsePoStep assigns the maps. The
// backends compute the same masks (Backend::MapoMask).
using MapoGroup = kernels::MapoGroup;

const char* MapoGroupName(MapoGroup group);

// One captured activation of one sequence, restricted to its response rows:
// the rows the output layer scores (row t is the position whose logits predict
// response token t).
struct MapoActivation {
  MapoGroup group;
  // Row t starts at data + t * stride and holds `width` values.
  const float* data;
  int width;
  int stride;
};

// x rounded to the nearest IEEE half-precision value (ties to even; beyond
// the largest half, ±infinity), as torch's float32 → float16 conversion.
float RoundToHalf(float x);

// Writes the mask of a sequence's `rows` response tokens to mask[rows] from the
// maps of the selected `groups`. A map that carries no ranking (a single
// token, or a spread that rounds to zero) counts as all ones, so it neither
// drops nor reweights tokens; the official code gives NaN there. Fails when
// `groups` is empty, a selected group has no map, or a map is malformed (width
// < 1, stride < width); maps of unselected groups are ignored.
absl::Status MapoMask(absl::Span<const MapoActivation> maps,
                      absl::Span<const MapoGroup> groups, int rows,
                      float* mask);

}  // namespace prefopt::objectives

#endif  // PREFOPT_TRAINER_OBJECTIVES_MAPO_MASKS_H_
