#include "comm/launch_env.h"

#include <climits>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

extern char** environ;

namespace prefopt::comm {
namespace {

using VarMap = std::map<std::string, std::string>;

std::optional<std::string> Lookup(const VarMap& env, const std::string& name) {
  const auto it = env.find(name);
  if (it == env.end()) return std::nullopt;
  return it->second;
}

// Strict decimal: digits only (no sign, no spaces), at most INT_MAX.
std::optional<int> ParseNonNegative(const std::string& text) {
  if (text.empty() || text.size() > 10) return std::nullopt;
  int64_t value = 0;
  for (const char c : text) {
    if (c < '0' || c > '9') return std::nullopt;
    value = value * 10 + (c - '0');
  }
  if (value > INT_MAX) return std::nullopt;
  return static_cast<int>(value);
}

absl::StatusOr<int> RequireInt(const VarMap& env, const std::string& name,
                               const std::string& launcher) {
  const std::optional<std::string> text = Lookup(env, name);
  if (!text.has_value()) {
    return absl::InvalidArgumentError(
        absl::StrCat(name, " is not set, but other ", launcher,
                     " variables are: the launch environment is incomplete "
                     "(was the process started by ",
                     launcher, "?)"));
  }
  const std::optional<int> value = ParseNonNegative(*text);
  if (!value.has_value()) {
    return absl::InvalidArgumentError(absl::StrCat(
        name, "=\"", *text, "\" is not a non-negative decimal integer"));
  }
  return *value;
}

absl::StatusOr<int> RequirePositive(const VarMap& env, const std::string& name,
                                    const std::string& launcher) {
  absl::StatusOr<int> value = RequireInt(env, name, launcher);
  if (value.ok() && *value == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(name, "=0: a job has at least one rank"));
  }
  return value;
}

// Slurm's compressed per-node task counts: "4(x2),3" means 4, 4, 3.
absl::StatusOr<std::vector<int>> ParseTasksPerNode(const std::string& name,
                                                   const std::string& text) {
  std::vector<int> counts;
  const auto malformed = [&]() {
    return absl::InvalidArgumentError(absl::StrCat(
        name, "=\"", text,
        "\" is malformed: expected comma-separated counts like \"4(x2),3\""));
  };
  for (const absl::string_view item : absl::StrSplit(text, ',')) {
    std::string count_text(item);
    int repeat = 1;
    const size_t paren = count_text.find("(x");
    if (paren != std::string::npos) {
      if (count_text.back() != ')') return malformed();
      const std::optional<int> r = ParseNonNegative(
          count_text.substr(paren + 2, count_text.size() - paren - 3));
      if (!r.has_value() || *r == 0) return malformed();
      repeat = *r;
      count_text.resize(paren);
    }
    const std::optional<int> count = ParseNonNegative(count_text);
    if (!count.has_value() || *count == 0) return malformed();
    if (counts.size() + repeat > (1u << 20)) return malformed();
    counts.insert(counts.end(), repeat, *count);
  }
  return counts;
}

absl::Status CheckPmixRank(const VarMap& env, const LaunchEnv& result,
                           const std::string& rank_var) {
  const std::optional<std::string> pmix = Lookup(env, "PMIX_RANK");
  if (!pmix.has_value()) return absl::OkStatus();
  const std::optional<int> pmix_rank = ParseNonNegative(*pmix);
  if (!pmix_rank.has_value()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "PMIX_RANK=\"", *pmix, "\" is not a non-negative decimal integer"));
  }
  if (*pmix_rank != result.rank) {
    return absl::InvalidArgumentError(
        absl::StrCat("PMIX_RANK=", *pmix_rank, " disagrees with ", rank_var,
                     "=", result.rank,
                     ": the process sees the variables of two different "
                     "launches (a launcher started inside another job?)"));
  }
  return absl::OkStatus();
}

absl::Status CheckRanges(const LaunchEnv& e, const std::string& rank_var,
                         const std::string& size_var,
                         const std::string& local_rank_var,
                         const std::string& local_size_var) {
  if (e.rank >= e.world_size) {
    return absl::InvalidArgumentError(absl::StrCat(
        rank_var, "=", e.rank, " is not below ", size_var, "=", e.world_size));
  }
  if (e.local_rank >= e.local_world_size) {
    return absl::InvalidArgumentError(
        absl::StrCat(local_rank_var, "=", e.local_rank, " is not below ",
                     local_size_var, "=", e.local_world_size));
  }
  if (e.local_world_size > e.world_size) {
    return absl::InvalidArgumentError(
        absl::StrCat(local_size_var, "=", e.local_world_size, " exceeds ",
                     size_var, "=", e.world_size));
  }
  return absl::OkStatus();
}

absl::StatusOr<LaunchEnv> FromMpirun(const VarMap& env) {
  const std::string launcher = "mpirun";
  LaunchEnv e;
  e.launcher = launcher;
  absl::StatusOr<int> v = RequireInt(env, "OMPI_COMM_WORLD_RANK", launcher);
  if (!v.ok()) return v.status();
  e.rank = *v;
  v = RequirePositive(env, "OMPI_COMM_WORLD_SIZE", launcher);
  if (!v.ok()) return v.status();
  e.world_size = *v;
  v = RequireInt(env, "OMPI_COMM_WORLD_LOCAL_RANK", launcher);
  if (!v.ok()) return v.status();
  e.local_rank = *v;
  v = RequirePositive(env, "OMPI_COMM_WORLD_LOCAL_SIZE", launcher);
  if (!v.ok()) return v.status();
  e.local_world_size = *v;
  absl::Status s =
      CheckRanges(e, "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE",
                  "OMPI_COMM_WORLD_LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_SIZE");
  if (!s.ok()) return s;
  s = CheckPmixRank(env, e, "OMPI_COMM_WORLD_RANK");
  if (!s.ok()) return s;
  return e;
}

absl::StatusOr<LaunchEnv> FromSrun(const VarMap& env) {
  const std::string launcher = "srun";
  LaunchEnv e;
  e.launcher = launcher;
  absl::StatusOr<int> v = RequireInt(env, "SLURM_PROCID", launcher);
  if (!v.ok()) return v.status();
  e.rank = *v;
  const std::string size_var = Lookup(env, "SLURM_STEP_NUM_TASKS").has_value()
                                   ? "SLURM_STEP_NUM_TASKS"
                                   : "SLURM_NTASKS";
  v = RequirePositive(env, size_var, launcher);
  if (!v.ok()) return v.status();
  e.world_size = *v;
  v = RequireInt(env, "SLURM_LOCALID", launcher);
  if (!v.ok()) return v.status();
  e.local_rank = *v;

  std::string local_size_var;
  const std::optional<std::string> step_tasks =
      Lookup(env, "SLURM_STEP_TASKS_PER_NODE");
  if (step_tasks.has_value() && Lookup(env, "SLURM_NODEID").has_value()) {
    local_size_var = "SLURM_STEP_TASKS_PER_NODE";
    absl::StatusOr<std::vector<int>> counts =
        ParseTasksPerNode(local_size_var, *step_tasks);
    if (!counts.ok()) return counts.status();
    v = RequireInt(env, "SLURM_NODEID", launcher);
    if (!v.ok()) return v.status();
    if (static_cast<size_t>(*v) >= counts->size()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "SLURM_NODEID=", *v, " is past the ", counts->size(),
          " nodes of SLURM_STEP_TASKS_PER_NODE=\"", *step_tasks, "\""));
    }
    e.local_world_size = (*counts)[*v];
    int64_t total = 0;
    for (const int c : *counts) total += c;
    if (total != e.world_size) {
      return absl::InvalidArgumentError(absl::StrCat(
          "SLURM_STEP_TASKS_PER_NODE=\"", *step_tasks, "\" adds up to ", total,
          " tasks but ", size_var, "=", e.world_size));
    }
  } else if (Lookup(env, "SLURM_NTASKS_PER_NODE").has_value()) {
    local_size_var = "SLURM_NTASKS_PER_NODE";
    v = RequirePositive(env, local_size_var, launcher);
    if (!v.ok()) return v.status();
    e.local_world_size = *v;
  } else {
    return absl::InvalidArgumentError(
        "SLURM_PROCID is set but the number of tasks on this node is not: "
        "neither SLURM_STEP_TASKS_PER_NODE (with SLURM_NODEID) nor "
        "SLURM_NTASKS_PER_NODE is set; start the ranks with srun, or pass "
        "--ntasks-per-node");
  }
  absl::Status s =
      CheckRanges(e, "SLURM_PROCID", size_var, "SLURM_LOCALID", local_size_var);
  if (!s.ok()) return s;
  s = CheckPmixRank(env, e, "SLURM_PROCID");
  if (!s.ok()) return s;
  return e;
}

}  // namespace

absl::StatusOr<LaunchEnv> LaunchEnvFromVariables(const VarMap& env) {
  for (const char* name :
       {"OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE",
        "OMPI_COMM_WORLD_LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_SIZE"}) {
    if (env.count(name) > 0) return FromMpirun(env);
  }
  if (env.count("SLURM_PROCID") > 0) return FromSrun(env);
  if (env.count("PMIX_RANK") > 0) {
    return absl::InvalidArgumentError(
        "PMIX_RANK is set but neither OMPI_COMM_WORLD_* (mpirun) nor "
        "SLURM_PROCID (srun) is: this launcher is not supported; start the "
        "ranks with mpirun or srun");
  }
  return LaunchEnv{};
}

absl::StatusOr<LaunchEnv> DetectLaunchEnv() {
  VarMap env;
  for (char** entry = environ; *entry != nullptr; ++entry) {
    const std::string text(*entry);
    const size_t eq = text.find('=');
    if (eq == std::string::npos) continue;
    const std::string name = text.substr(0, eq);
    if (absl::StartsWith(name, "OMPI_COMM_WORLD_") ||
        absl::StartsWith(name, "SLURM_") || name == "PMIX_RANK") {
      env[name] = text.substr(eq + 1);
    }
  }
  return LaunchEnvFromVariables(env);
}

std::string DescribeLaunchEnv(const LaunchEnv& env) {
  return absl::StrCat("rank ", env.rank, " of ", env.world_size, " (local ",
                      env.local_rank, " of ", env.local_world_size,
                      ", launched by ", env.launcher, ")");
}

}  // namespace prefopt::comm
