#include "trainer/objectives/sparsepo_mask_net.h"

#include <cstdio>
#include <cstdlib>
#include <vector>

#include "kernels/memory_purpose.h"

namespace prefopt::objectives {

SparsePoMaskNet::SparsePoMaskNet(kernels::Backend* backend,
                                 const std::string& name, int num_layers,
                                 int hidden, float ln_eps)
    : backend_(backend), shape_{num_layers, hidden, ln_eps} {
  auto add = [&](const std::string& suffix, int64_t n, bool decayed,
                 model::Init init) {
    model::ParamTensor t;
    t.name = name + "." + suffix;
    t.shape = {n};
    t.is_norm_or_bias = !decayed;
    t.init = init;
    return layout_.Add(std::move(t));
  };
  // In kernels::SparsePoMaskNetShape's order, which the backends read.
  const size_t ln_w = add("ln.weight", hidden, false, model::Init::kOnes);
  const size_t ln_b = add("ln.bias", hidden, false, model::Init::kZeros);
  bool in_order = ln_w == shape_.ln_weight() && ln_b == shape_.ln_bias();
  for (int l = 0; l < num_layers; ++l) {
    in_order &= add("w." + std::to_string(l), hidden, true,
                    model::Init::kNormal) == shape_.w(l);
  }
  in_order &= add("b", num_layers, false, model::Init::kZeros) == shape_.b();
  in_order &= add("c", num_layers, true, model::Init::kNormal) == shape_.c();
  if (!in_order || layout_.total() != shape_.params()) {
    std::fprintf(stderr,
                 "SparsePoMaskNet: the layout's offsets differ from "
                 "SparsePoMaskNetShape's\n");
    std::abort();
  }
  kernels::MemoryPurpose purpose("SparsePO mask network " + name);
  params_ = backend_->Alloc(layout_.total());
  grads_ = backend_->Alloc(layout_.total());
  backend_->Zero(params_, layout_.total());
  backend_->Zero(grads_, layout_.total());
}

SparsePoMaskNet::~SparsePoMaskNet() {
  backend_->Free(params_);
  backend_->Free(grads_);
}

void SparsePoMaskNet::Init(util::Rng* rng, double init_std) {
  std::vector<float> host(layout_.total(), 0.0f);
  for (const model::ParamTensor& t : layout_.tensors()) {
    float* p = host.data() + t.offset;
    for (size_t i = 0; i < t.numel; ++i) {
      switch (t.init) {
        case model::Init::kNormal:
          p[i] = static_cast<float>(init_std * rng->Normal());
          break;
        case model::Init::kOnes:
          p[i] = 1.0f;
          break;
        case model::Init::kZeros:
          p[i] = 0.0f;
          break;
      }
    }
  }
  backend_->CopyToDevice(params_, host.data(), host.size());
  ZeroGrads();
}

void SparsePoMaskNet::ZeroGrads() { backend_->Zero(grads_, layout_.total()); }

void SparsePoMaskNet::Forward(const float* hidden, int rows,
                              float* mask) const {
  backend_->SparsePoMaskForward(mask, hidden, rows, params_, shape_);
}

void SparsePoMaskNet::Backward(const float* hidden, int rows,
                               const float* dmask) {
  backend_->SparsePoMaskBackward(grads_, dmask, hidden, rows, params_, shape_);
}

}  // namespace prefopt::objectives
