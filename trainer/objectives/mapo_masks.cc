#include "trainer/objectives/mapo_masks.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "absl/strings/str_cat.h"
#include "kernels/sparsepo_math.h"

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

float RoundToHalf(float x) { return kernels::sparsepo_math::RoundToHalf(x); }

absl::Status MapoMask(absl::Span<const MapoActivation> maps,
                      absl::Span<const MapoGroup> groups, int rows,
                      float* mask) {
  if (groups.empty()) {
    return absl::InvalidArgumentError(
        "MaPO masks: no activation group selected");
  }
  std::vector<MapoGroup> map_groups;
  for (const MapoActivation& map : maps) {
    const bool selected =
        std::find(groups.begin(), groups.end(), map.group) != groups.end();
    if (selected && (map.width < 1 || map.stride < map.width)) {
      return absl::InvalidArgumentError(
          absl::StrCat("MaPO masks: a ", MapoGroupName(map.group),
                       " map has width ", map.width, " and row stride ",
                       map.stride, " (need width >= 1 and stride >= width)"));
    }
    map_groups.push_back(map.group);
  }
  for (MapoGroup group : groups) {
    if (std::find(map_groups.begin(), map_groups.end(), group) ==
        map_groups.end()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "MaPO masks: group ", MapoGroupName(group), " is selected but no ",
          MapoGroupName(group), " activation was captured"));
    }
  }
  // A map's score of a row is the row's mean activation.
  auto score = [&](int i, int t) {
    const float* row = maps[i].data + static_cast<size_t>(t) * maps[i].stride;
    double s = 0;
    for (int h = 0; h < maps[i].width; ++h) s += row[h];
    return s / maps[i].width;
  };
  std::vector<double> work(3 * static_cast<size_t>(rows));
  kernels::sparsepo_math::HostMapoSequenceMask(
      rows, map_groups.data(), static_cast<int>(map_groups.size()),
      groups.data(), static_cast<int>(groups.size()), score, work.data(), mask);
  return absl::OkStatus();
}

}  // namespace prefopt::objectives
