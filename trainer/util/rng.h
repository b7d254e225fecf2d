// A small, fully specified pseudo-random generator. The standard library's
// distributions are implementation-defined; ours give the same numbers on every
// platform and compiler, which bit-exact resume and determinism need.
#ifndef PREFOPT_TRAINER_UTIL_RNG_H_
#define PREFOPT_TRAINER_UTIL_RNG_H_

#include <cmath>
#include <cstdint>

namespace prefopt::util {

// SplitMix64 (Steele, Lea & Flood 2014): 64-bit state, passes BigCrush, and its
// whole state is one integer, so checkpoints can store it.
class Rng {
 public:
  explicit Rng(uint64_t seed) : state_(seed) {}

  uint64_t NextU64() {
    uint64_t z = (state_ += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  // Uniform in [0, 1) with 53 random bits.
  double Uniform() { return (NextU64() >> 11) * 0x1.0p-53; }
  // Uniform integer in [0, n) (n > 0), without modulo bias worth noting for
  // n far below 2^64.
  uint64_t Below(uint64_t n) { return NextU64() % n; }
  // Standard normal by Box-Muller (one value per call; the pair's second value
  // is dropped so the state advance is always the same).
  double Normal() {
    double u1 = Uniform();
    double u2 = Uniform();
    if (u1 < 1e-300) u1 = 1e-300;
    return std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2);
  }
  uint64_t state() const { return state_; }
  void set_state(uint64_t s) { state_ = s; }

 private:
  uint64_t state_;
};

}  // namespace prefopt::util

#endif  // PREFOPT_TRAINER_UTIL_RNG_H_
