// The backend a run or an evaluation computes on, from the config's device
// and precision (proto/config.proto) and the launcher's node-local rank.
#ifndef PREFOPT_TRAINER_LOOP_DEVICE_SELECT_H_
#define PREFOPT_TRAINER_LOOP_DEVICE_SELECT_H_

#include "absl/status/statusor.h"
#include "kernels/select/backend_select.h"
#include "proto/config.pb.h"

namespace prefopt::loop {

// kernels::SelectBackend for `config`, on GPU `node-local rank` (mpirun's or
// srun's), or GPU 0 when CUDA_VISIBLE_DEVICES names exactly one (a launcher
// that binds a GPU to each rank); errors name the rank, and ranks on a node
// that outnumber its GPUs get an error saying how to start one per GPU.
absl::StatusOr<kernels::SelectedBackend> SelectDevice(const TrainConfig& config,
                                                      int rank);

}  // namespace prefopt::loop

#endif  // PREFOPT_TRAINER_LOOP_DEVICE_SELECT_H_
