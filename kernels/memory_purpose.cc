#include "kernels/memory_purpose.h"

#include <utility>

namespace prefopt::kernels {
namespace {

thread_local MemoryPurpose* innermost = nullptr;

}  // namespace

MemoryPurpose::MemoryPurpose(std::string what)
    : outer_(innermost), what_(std::move(what)) {
  innermost = this;
}

MemoryPurpose::~MemoryPurpose() { innermost = outer_; }

std::string MemoryPurpose::Describe() {
  std::string text;
  for (const MemoryPurpose* p = innermost; p != nullptr; p = p->outer_) {
    text = text.empty() ? p->what_ : p->what_ + ": " + text;
  }
  return text;
}

}  // namespace prefopt::kernels
