// Gradient exchange between data-parallel ranks for one optimizer step.
//
// ZeRO stage 0: every rank ends with the summed gradient. Each transformer
// block's gradients are all-reduced without blocking as soon as the last
// micro-batch's backward pass has finished that block, overlapping the
// communication with the backward of the blocks below it; the embeddings,
// final norm and output layer follow at the end.
// ZeRO stage 1: the gradients are reduce-scattered at the end of the backward
// pass, so each rank holds the sum for its own shard only; after the sharded
// optimizer update the weights are all-gathered.
//
// Gradients are summed, not averaged: each rank's contribution is already
// divided by the global batch's denominator (docs/objectives.md §0).
#ifndef PREFOPT_TRAINER_LOOP_GRADIENT_SYNC_H_
#define PREFOPT_TRAINER_LOOP_GRADIENT_SYNC_H_

#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "comm/communicator.h"
#include "trainer/model/decoder.h"

namespace prefopt::loop {

class GradientSync {
 public:
  // `padded_total` floats of gradient (a multiple of the world size).
  GradientSync(comm::Communicator* comm, size_t padded_total, int zero_stage);

  // This rank's optimizer shard: everything under stage 0.
  model::ParamRange shard() const { return shard_; }
  int zero_stage() const { return zero_stage_; }

  // Arms the overlap for the backward pass that follows (the last micro-batch
  // of a step): from now on BlockReady starts reductions.
  void BeginLastBackward() { overlapping_ = zero_stage_ == 0; }
  // A decoder block's gradients are final (Decoder's grads-ready callback).
  void BlockReady(float* grads, model::ParamRange range);
  // Completes the exchange: starts what is left, waits for everything.
  absl::Status Finish(float* grads);

  // Σ grad² over the whole model, from this rank's reduced shard.
  absl::StatusOr<double> GlobalGradSquares(double local_squares);
  // Stage 1: gathers every rank's updated shard of `params`.
  absl::Status GatherParams(float* params);

 private:
  comm::Communicator* comm_;
  size_t total_;
  int zero_stage_;
  model::ParamRange shard_;
  bool overlapping_ = false;
  std::vector<std::unique_ptr<comm::PendingReduce>> pending_;
  std::vector<model::ParamRange> started_;
};

}  // namespace prefopt::loop

#endif  // PREFOPT_TRAINER_LOOP_GRADIENT_SYNC_H_
