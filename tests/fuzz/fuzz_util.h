// Helpers shared by the fuzz targets: a per-process scratch folder for the
// inputs of APIs that take a path, and splitting one input into parts.
#ifndef PREFOPT_TESTS_FUZZ_FUZZ_UTIL_H_
#define PREFOPT_TESTS_FUZZ_FUZZ_UTIL_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"

namespace prefopt::fuzz {

// A folder made on first use under $TEST_TMPDIR (else $TMPDIR, else /tmp)
// and removed when the process exits, unless PREFOPT_FUZZ_KEEP_SCRATCH is set
// (to look at the files of a finding; the path is printed). Every target
// reuses its file names in it, so a long fuzzing run does not fill the disk.
const std::string& ScratchDir();

// Writes `bytes` to ScratchDir()/`relative` (parent folders are made) and
// returns the path. Aborts if the file cannot be written: that is a broken
// machine, not a finding.
std::string WriteScratchFile(const std::string& relative,
                             std::string_view bytes);

// The parts of `input` between occurrences of kPartSeparator, at most
// `max_parts` (the last part keeps any further separators).
inline constexpr std::string_view kPartSeparator = "\n=====\n";
std::vector<std::string_view> SplitParts(std::string_view input,
                                         size_t max_parts);

// Aborts (a finding) when `status` is an error whose message does not
// contain `needle`: errors about an input file must name it.
void CheckErrorNames(const absl::Status& status, std::string_view needle);

inline std::string_view AsView(const uint8_t* data, size_t size) {
  return std::string_view(reinterpret_cast<const char*>(data), size);
}

}  // namespace prefopt::fuzz

#endif  // PREFOPT_TESTS_FUZZ_FUZZ_UTIL_H_
