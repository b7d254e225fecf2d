#include "trainer/lora/lora_modules.h"

#include <algorithm>
#include <set>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace prefopt::lora {
namespace {

using Arch = io::ModelSpec::Arch;

bool Matches(const std::string& path, const std::string& target) {
  return path == target || absl::EndsWith(path, absl::StrCat(".", target));
}

}  // namespace

std::vector<LinearModule> LinearModules(const io::ModelSpec& spec) {
  std::vector<LinearModule> modules;
  const int64_t C = spec.hidden;
  const int64_t q_width = spec.n_head * spec.head_dim;
  const int64_t kv_width = spec.n_kv_head * spec.head_dim;
  for (int layer = 0; layer < spec.n_layer; ++layer) {
    auto add = [&](const std::string& name, Projection projection,
                   int64_t in_features, int64_t out_features) {
      const bool gpt2 = spec.arch == Arch::kGpt2;
      modules.push_back({absl::StrCat(gpt2 ? "transformer.h." : "model.layers.",
                                      layer, ".", name),
                         name, layer, projection, in_features, out_features,
                         gpt2});
    };
    if (spec.arch == Arch::kGpt2) {
      add("attn.c_attn", Projection::kAttentionQkv, C, 3 * C);
      add("attn.c_proj", Projection::kAttentionOut, C, C);
      add("mlp.c_fc", Projection::kMlpIn, C, spec.intermediate);
      add("mlp.c_proj", Projection::kMlpOut, spec.intermediate, C);
    } else {
      add("self_attn.q_proj", Projection::kQuery, C, q_width);
      add("self_attn.k_proj", Projection::kKey, C, kv_width);
      add("self_attn.v_proj", Projection::kValue, C, kv_width);
      add("self_attn.o_proj", Projection::kAttentionOut, q_width, C);
      add("mlp.gate_proj", Projection::kGate, C, spec.intermediate);
      add("mlp.up_proj", Projection::kUp, C, spec.intermediate);
      add("mlp.down_proj", Projection::kMlpOut, spec.intermediate, C);
    }
  }
  return modules;
}

std::vector<std::string> DefaultTargetModules(const io::ModelSpec& spec) {
  if (spec.arch == Arch::kGpt2) return {"c_attn"};
  return {"q_proj", "v_proj"};
}

absl::StatusOr<std::vector<LinearModule>> ResolveTargetModules(
    const io::ModelSpec& spec, const std::vector<std::string>& targets,
    const std::string& field) {
  const std::vector<LinearModule> all = LinearModules(spec);
  const std::vector<std::string> chosen =
      targets.empty() ? DefaultTargetModules(spec) : targets;
  const bool all_linear =
      std::find(chosen.begin(), chosen.end(), "all-linear") != chosen.end();
  if (all_linear) {
    if (chosen.size() != 1) {
      return absl::InvalidArgumentError(
          absl::StrCat(field, ": \"all-linear\" must be the only entry (got ",
                       absl::StrJoin(chosen, ", "), ")"));
    }
    return all;
  }
  std::vector<LinearModule> selected;
  std::set<std::string> used;
  for (const LinearModule& module : all) {
    for (const std::string& target : chosen) {
      if (Matches(module.path, target)) {
        used.insert(target);
        selected.push_back(module);
        break;
      }
    }
  }
  for (const std::string& target : chosen) {
    if (used.count(target) == 0) {
      std::vector<std::string> names;
      for (int i = 0; i < static_cast<int>(all.size()) && all[i].layer == 0;
           ++i) {
        names.push_back(all[i].name);
      }
      return absl::InvalidArgumentError(absl::StrCat(
          field, ": \"", target,
          "\" matches no linear layer of the model; its layers are ",
          absl::StrJoin(names, ", "), " (or \"all-linear\")"));
    }
  }
  return selected;
}

}  // namespace prefopt::lora
