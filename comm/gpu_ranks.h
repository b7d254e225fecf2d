// The GPU communicators of this build, for comm/gpu_communicator.h.
#ifndef PREFOPT_COMM_GPU_RANKS_H_
#define PREFOPT_COMM_GPU_RANKS_H_

namespace prefopt::comm {

// Registers the factory CreateGpuCommunicator uses: NCCL bootstrapped over
// the host communicator on a GPU (compute stream: the caller's); the staged
// communicator (comm/staged_communicator.h) on the CUDA CPU simulation, which
// has no NCCL. In a build without the CUDA toolkit the factory says that the
// build has no GPU communicator.
void RegisterGpuCommunicators();

}  // namespace prefopt::comm

#endif  // PREFOPT_COMM_GPU_RANKS_H_
