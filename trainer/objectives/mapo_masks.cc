#include "trainer/objectives/mapo_masks.h"

#include <algorithm>
#include <vector>

#include "absl/strings/str_cat.h"

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
      const auto [lo, hi] = std::minmax_element(scores.begin(), scores.end());
      const double min = rows > 0 ? *lo : 0.0;
      const double range = rows > 0 ? *hi - min : 0.0;
      for (int t = 0; t < rows; ++t) {
        group_sum[t] += range > 0 ? (scores[t] - min) / range : 1.0;
      }
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
