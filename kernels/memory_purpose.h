// What the memory a backend is allocating is for, so that an out-of-memory
// error can name the buffer ("policy model: activations of layer 3") instead
// of only a size. Callers open a scope around their allocations; scopes nest
// on the calling thread, and a backend whose allocation fails reads them with
// MemoryPurpose::Describe().
#ifndef PREFOPT_KERNELS_MEMORY_PURPOSE_H_
#define PREFOPT_KERNELS_MEMORY_PURPOSE_H_

#include <string>

namespace prefopt::kernels {

class MemoryPurpose {
 public:
  explicit MemoryPurpose(std::string what);
  ~MemoryPurpose();
  MemoryPurpose(const MemoryPurpose&) = delete;
  MemoryPurpose& operator=(const MemoryPurpose&) = delete;

  // The open scopes of this thread, outermost first, joined by ": "; empty
  // when none is open.
  static std::string Describe();

 private:
  MemoryPurpose* const outer_;
  const std::string what_;
};

}  // namespace prefopt::kernels

#endif  // PREFOPT_KERNELS_MEMORY_PURPOSE_H_
