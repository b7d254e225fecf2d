#include "comm/fake_nccl.h"

#include <cuda_runtime.h>
#include <nccl.h>

#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "kernels/cuda/sim/runtime.h"

struct ncclComm {
  int nranks = 0;
  int rank = 0;
};

namespace prefopt::comm::fake_nccl {
namespace {

struct State {
  float peer = 1000.0f;
  ncclResult_t async_error = ncclSuccess;
  bool aborted = false;
  bool stalled = false;
  std::vector<std::string> log;
  std::vector<cudaStream_t> streams;
};

State& S() {
  static State* state = new State();
  return *state;
}

std::string Address(const void* p) {
  return absl::StrCat(reinterpret_cast<uintptr_t>(p));
}

// Queues `work` on `stream`, remembered for ncclCommGetAsyncError's progress.
template <typename Work>
ncclResult_t Queue(cudaStream_t stream, Work work) {
  if (std::find(S().streams.begin(), S().streams.end(), stream) ==
      S().streams.end()) {
    S().streams.push_back(stream);
  }
  prefopt::cudasim::Enqueue(stream, work);
  return ncclSuccess;
}

size_t Size(ncclDataType_t type) { return type == ncclDouble ? 8 : 4; }

// out[i] = in[i] + peer (sum over 2 ranks) or its mean, in `type`.
void Reduce(const void* in, void* out, size_t count, ncclDataType_t type,
            ncclRedOp_t op) {
  const double scale = op == ncclAvg ? 0.5 : 1.0;
  for (size_t i = 0; i < count; ++i) {
    if (type == ncclDouble) {
      static_cast<double*>(out)[i] =
          (static_cast<const double*>(in)[i] + S().peer) * scale;
    } else {
      static_cast<float*>(out)[i] = static_cast<float>(
          (static_cast<const float*>(in)[i] + S().peer) * scale);
    }
  }
}

}  // namespace

void SetPeerValue(float peer) { S().peer = peer; }
void SetAsyncError(ncclResult_t error) { S().async_error = error; }

void SetStalled(bool stalled) { S().stalled = stalled; }
std::vector<std::string>& Log() { return S().log; }
bool Aborted() { return S().aborted; }

}  // namespace prefopt::comm::fake_nccl

using prefopt::comm::fake_nccl::Address;
using prefopt::comm::fake_nccl::Queue;
using prefopt::comm::fake_nccl::Reduce;
using prefopt::comm::fake_nccl::S;
using prefopt::comm::fake_nccl::Size;

const char* ncclGetErrorString(ncclResult_t result) {
  return result == ncclSuccess ? "no error" : "fake NCCL error";
}

const char* ncclGetLastError(ncclComm_t) { return ""; }

ncclResult_t ncclGetUniqueId(ncclUniqueId* id) {
  std::memset(id, 0, sizeof(*id));
  return ncclSuccess;
}

ncclResult_t ncclCommInitRank(ncclComm_t* comm, int nranks, ncclUniqueId,
                              int rank) {
  *comm = new ncclComm{nranks, rank};
  return ncclSuccess;
}

ncclResult_t ncclCommDestroy(ncclComm_t comm) {
  delete comm;
  return ncclSuccess;
}

ncclResult_t ncclCommAbort(ncclComm_t comm) {
  S().aborted = true;
  delete comm;
  return ncclSuccess;
}

ncclResult_t ncclCommGetAsyncError(ncclComm_t, ncclResult_t* async_error) {
  if (!S().stalled) {
    for (cudaStream_t s : S().streams) cudaStreamSynchronize(s);
  }
  *async_error = S().async_error;
  return ncclSuccess;
}

ncclResult_t ncclAllReduce(const void* send, void* recv, size_t count,
                           ncclDataType_t type, ncclRedOp_t op, ncclComm_t,
                           cudaStream_t stream) {
  return Queue(stream, [=] {
    S().log.push_back("AllReduce " + Address(recv));
    Reduce(send, recv, count, type, op);
  });
}

ncclResult_t ncclReduceScatter(const void* send, void* recv, size_t count,
                               ncclDataType_t type, ncclRedOp_t op,
                               ncclComm_t comm, cudaStream_t stream) {
  const int rank = comm->rank;
  return Queue(stream, [=] {
    S().log.push_back("ReduceScatter " + Address(recv));
    Reduce(static_cast<const char*>(send) + rank * count * Size(type), recv,
           count, type, op);
  });
}

ncclResult_t ncclAllGather(const void* send, void* recv, size_t count,
                           ncclDataType_t type, ncclComm_t comm,
                           cudaStream_t stream) {
  const int rank = comm->rank, nranks = comm->nranks;
  return Queue(stream, [=] {
    S().log.push_back("AllGather " + Address(recv));
    const size_t bytes = count * Size(type);
    std::memmove(static_cast<char*>(recv) + rank * bytes, send, bytes);
    for (int r = 0; r < nranks; ++r) {
      if (r == rank) continue;
      float* block =
          reinterpret_cast<float*>(static_cast<char*>(recv) + r * bytes);
      std::fill(block, block + count, S().peer);
    }
  });
}

ncclResult_t ncclBroadcast(const void* send, void* recv, size_t count,
                           ncclDataType_t type, int root, ncclComm_t comm,
                           cudaStream_t stream) {
  const int rank = comm->rank;
  return Queue(stream, [=] {
    S().log.push_back("Broadcast " + Address(recv));
    if (root == rank) {
      std::memmove(recv, send, count * Size(type));
    } else {
      std::memset(recv, 0, count * Size(type));
    }
  });
}
