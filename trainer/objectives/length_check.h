// Aborts on per-token inputs of different lengths: the objectives take the
// response tokens of one sequence from several sources (the policy's pass 1,
// the reference, the masks), and a mismatch is a bug in the caller's
// alignment, not a condition a user can fix.
#ifndef PREFOPT_TRAINER_OBJECTIVES_LENGTH_CHECK_H_
#define PREFOPT_TRAINER_OBJECTIVES_LENGTH_CHECK_H_

#include <cstddef>
#include <cstdio>
#include <cstdlib>

namespace prefopt::objectives {

inline void CheckSameLength(const char* where, const char* what,
                            size_t expected, size_t got) {
  if (expected != got) {
    std::fprintf(stderr, "%s: %s has %zu tokens, expected %zu\n", where, what,
                 got, expected);
    std::abort();
  }
}

}  // namespace prefopt::objectives

#endif  // PREFOPT_TRAINER_OBJECTIVES_LENGTH_CHECK_H_
