#include "comm/failure.h"

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"

namespace prefopt::comm {
namespace {

// A fingerprint travels as four 16-bit pieces in doubles (exact), so that one
// fp64 all-reduce over a zeroed table gathers every rank's value.
constexpr int kPieces = 4;

// "0,2-3,5" from sorted ranks.
std::string RankList(const std::vector<int>& ranks) {
  std::vector<std::string> parts;
  for (size_t i = 0; i < ranks.size();) {
    size_t j = i;
    while (j + 1 < ranks.size() && ranks[j + 1] == ranks[j] + 1) ++j;
    parts.push_back(j == i ? absl::StrCat(ranks[i])
                           : absl::StrCat(ranks[i], "-", ranks[j]));
    i = j + 1;
  }
  return absl::StrJoin(parts, ",");
}

}  // namespace

absl::Status CheckSameAcrossRanks(Communicator& comm, uint64_t fingerprint,
                                  const std::string& what) {
  const int world = comm.world_size();
  std::vector<double> table(static_cast<size_t>(world) * kPieces, 0.0);
  for (int p = 0; p < kPieces; ++p) {
    table[comm.rank() * kPieces + p] =
        static_cast<double>((fingerprint >> (16 * p)) & 0xffff);
  }
  absl::Status status = comm.AllReduceSum(table.data(), table.size());
  if (!status.ok()) {
    return absl::Status(
        status.code(),
        absl::StrCat("comparing ", what, " across ranks: ", status.message()));
  }
  // Distinct values in order of their lowest rank, with their ranks.
  std::vector<uint64_t> values;
  std::map<uint64_t, std::vector<int>> ranks_of;
  for (int r = 0; r < world; ++r) {
    uint64_t value = 0;
    for (int p = 0; p < kPieces; ++p) {
      value |= static_cast<uint64_t>(table[r * kPieces + p]) << (16 * p);
    }
    std::vector<int>& ranks = ranks_of[value];
    if (ranks.empty()) values.push_back(value);
    ranks.push_back(r);
  }
  if (values.size() == 1) return absl::OkStatus();
  std::vector<std::string> groups;
  for (const uint64_t value : values) {
    const std::vector<int>& ranks = ranks_of[value];
    groups.push_back(absl::StrFormat("0x%016x on rank%s %s", value,
                                     ranks.size() == 1 ? "" : "s",
                                     RankList(ranks)));
  }
  return absl::FailedPreconditionError(absl::StrCat(
      what, " differs across ranks: ", absl::StrJoin(groups, "; ")));
}

void AbortAll(Communicator& comm, const absl::Status& status) {
  std::fprintf(stderr,
               "prefopt rank %d/%d: fatal error, aborting all ranks: %s\n",
               comm.rank(), comm.world_size(), status.ToString().c_str());
  comm.Abort(1);
  // Abort never returns; should a backend break that promise, the launcher
  // still ends the job when this rank exits with an error.
  std::_Exit(1);
}

}  // namespace prefopt::comm
