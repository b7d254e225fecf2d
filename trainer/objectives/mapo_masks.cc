#include "trainer/objectives/mapo_masks.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "absl/strings/str_cat.h"
#include "trainer/io/safetensors.h"

namespace prefopt::objectives {

const char* MapoGroupName(MapoGroup group) {
  switch (group) {
    case MapoGroup::kMlp:
      return "mlp";
    case MapoGroup::kAttn:
      return "attn";
    case MapoGroup::kResid:
      return "resid";
    case MapoGroup::kLogits:
      return "logits";
  }
  return "unknown";
}

double RoundToHalf(float x) { return io::Fp16ToFloat(io::FloatToFp16(x)); }

namespace {

// One map's scores rescaled as the official "zn_rescale" does; false when the
// map carries no ranking.
bool Rescale(absl::Span<double> scores) {
  const int rows = static_cast<int>(scores.size());
  if (rows < 2) return false;
  double mean = 0;
  for (int t = 0; t < rows; ++t) mean += scores[t];
  mean /= rows;
  double squares = 0;
  for (int t = 0; t < rows; ++t) {
    squares += (scores[t] - mean) * (scores[t] - mean);
  }
  const double std_dev =
      RoundToHalf(static_cast<float>(std::sqrt(squares / (rows - 1))));
  if (!(std_dev > 0) || !std::isfinite(std_dev)) return false;
  for (int t = 0; t < rows; ++t) scores[t] = (scores[t] - mean) / std_dev;
  const auto [lo, hi] = std::minmax_element(scores.begin(), scores.end());
  const double min = RoundToHalf(static_cast<float>(*lo));
  // The official code subtracts the two half-precision values in half
  // precision.
  const double range = RoundToHalf(
      static_cast<float>(RoundToHalf(static_cast<float>(*hi)) - min));
  if (!(range > 0)) return false;
  for (int t = 0; t < rows; ++t) scores[t] = (scores[t] - min) / range;
  return true;
}

}  // namespace

absl::Status MapoMask(absl::Span<const MapoActivation> maps,
                      absl::Span<const MapoGroup> groups, int rows,
                      float* mask) {
  if (groups.empty()) {
    return absl::InvalidArgumentError(
        "MaPO masks: no activation group selected");
  }
  std::vector<double> total(rows, 0.0), group_sum(rows), scores(rows);
  for (MapoGroup group : groups) {
    std::fill(group_sum.begin(), group_sum.end(), 0.0);
    int count = 0;
    for (const MapoActivation& map : maps) {
      if (map.group != group) continue;
      if (map.width < 1 || map.stride < map.width) {
        return absl::InvalidArgumentError(
            absl::StrCat("MaPO masks: a ", MapoGroupName(group),
                         " map has width ", map.width, " and row stride ",
                         map.stride, " (need width >= 1 and stride >= width)"));
      }
      for (int t = 0; t < rows; ++t) {
        const float* row = map.data + static_cast<size_t>(t) * map.stride;
        double s = 0;
        for (int h = 0; h < map.width; ++h) s += row[h];
        scores[t] = s / map.width;
      }
      const bool ranked = Rescale(absl::MakeSpan(scores));
      for (int t = 0; t < rows; ++t) group_sum[t] += ranked ? scores[t] : 1.0;
      ++count;
    }
    if (count == 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "MaPO masks: group ", MapoGroupName(group), " is selected but no ",
          MapoGroupName(group), " activation was captured"));
    }
    for (int t = 0; t < rows; ++t) total[t] += group_sum[t] / count;
  }
  for (int t = 0; t < rows; ++t) {
    mask[t] = static_cast<float>(total[t] / groups.size());
  }
  return absl::OkStatus();
}

}  // namespace prefopt::objectives
