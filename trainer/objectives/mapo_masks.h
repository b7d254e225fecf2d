// MaPO's activation-derived token masks for SparsePO (docs/objectives.md §2,
// "MaPO"): fixed masks computed from the frozen reference model's activations
// on the response tokens, with no parameters and no gradient.
//
// Each captured activation map A (rows × H) becomes a per-token score
// a_t = mean_h A_{t,h}, min–max rescaled over the sequence's response tokens
// to [0, 1]. The maps of one group are averaged, and the mask is the mean of
// the selected groups' averages (one common mask for the reward and KL terms).
#ifndef PREFOPT_TRAINER_OBJECTIVES_MAPO_MASKS_H_
#define PREFOPT_TRAINER_OBJECTIVES_MAPO_MASKS_H_

#include "absl/status/status.h"
#include "absl/types/span.h"

namespace prefopt::objectives {

enum class MapoGroup {
  kMlp,     // the MLP activation output of every layer
  kAttn,    // q, k, v (after rotary where the model has it) and the attention
            // output of every layer, each its own map
  kResid,   // the residual stream after each attention and MLP block, the
            // embedding output and the final-norm output
  kLogits,  // the reference logits (a_t = their mean over the vocabulary)
};

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

// Writes the mask of a sequence's `rows` response tokens to mask[rows] from the
// maps of the selected `groups`. A map whose scores are all equal (a single
// token, or a constant activation) carries no ranking and counts as all ones,
// so it neither drops nor reweights tokens. Fails when `groups` is empty, a
// selected group has no map, or a map is malformed (width < 1, stride <
// width); maps of unselected groups are ignored.
absl::Status MapoMask(absl::Span<const MapoActivation> maps,
                      absl::Span<const MapoGroup> groups, int rows,
                      float* mask);

}  // namespace prefopt::objectives

#endif  // PREFOPT_TRAINER_OBJECTIVES_MAPO_MASKS_H_
