#include "comm/mpi_communicator.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"

namespace prefopt::comm {
namespace {

// "MPI_Allreduce failed in AllReduceSum(n=8): <MPI's error string>".
absl::Status MpiError(int code, const std::string& mpi_call,
                      const std::string& operation) {
  char text[MPI_MAX_ERROR_STRING];
  int length = 0;
  if (MPI_Error_string(code, text, &length) != MPI_SUCCESS) {
    length = std::snprintf(text, sizeof(text), "MPI error code %d", code);
  }
  return absl::InternalError(absl::StrCat(mpi_call, " failed in ", operation,
                                          ": ", std::string(text, length)));
}

std::string Op(const char* name, size_t n) {
  return absl::StrCat(name, "(n=", n, ")");
}

bool Overlap(const void* a, size_t a_bytes, const void* b, size_t b_bytes) {
  const char* pa = static_cast<const char*>(a);
  const char* pb = static_cast<const char*>(b);
  return pa < pb + b_bytes && pb < pa + a_bytes;
}

template <typename T>
absl::Status AllReduceInChunks(MPI_Comm comm, T* data, size_t n,
                               MPI_Datatype type, const char* operation) {
  for (size_t offset = 0; offset < n; offset += MpiCommunicator::kMaxCount) {
    const size_t count = std::min(n - offset, MpiCommunicator::kMaxCount);
    const int rc = MPI_Allreduce(MPI_IN_PLACE, data + offset,
                                 static_cast<int>(count), type, MPI_SUM, comm);
    if (rc != MPI_SUCCESS) {
      return MpiError(rc, "MPI_Allreduce", Op(operation, n));
    }
  }
  return absl::OkStatus();
}

class MpiPendingReduce : public PendingReduce {
 public:
  MpiPendingReduce(std::vector<MPI_Request> requests, absl::Status status,
                   size_t n)
      : requests_(std::move(requests)), status_(std::move(status)), n_(n) {}

  ~MpiPendingReduce() override {
    if (!done_) Wait().IgnoreError();
  }

  absl::StatusOr<bool> Test() override {
    if (done_) return Result();
    int flag = 0;
    const int rc = MPI_Testall(static_cast<int>(requests_.size()),
                               requests_.data(), &flag, MPI_STATUSES_IGNORE);
    if (rc != MPI_SUCCESS) {
      Finish(MpiError(rc, "MPI_Testall", Op("StartAllReduceSum", n_)));
      return Result();
    }
    if (flag == 0) return false;
    Finish(absl::OkStatus());
    return Result();
  }

  absl::Status Wait() override {
    if (done_) return status_;
    const int rc = MPI_Waitall(static_cast<int>(requests_.size()),
                               requests_.data(), MPI_STATUSES_IGNORE);
    Finish(rc == MPI_SUCCESS
               ? absl::OkStatus()
               : MpiError(rc, "MPI_Waitall", Op("StartAllReduceSum", n_)));
    return status_;
  }

 private:
  // Keeps the first error: one from starting the operation wins over one
  // reported while completing the requests that did start.
  void Finish(absl::Status status) {
    done_ = true;
    if (status_.ok()) status_ = std::move(status);
  }

  absl::StatusOr<bool> Result() const {
    if (!status_.ok()) return status_;
    return true;
  }

  std::vector<MPI_Request> requests_;
  absl::Status status_;
  size_t n_;
  bool done_ = false;
};

}  // namespace

absl::StatusOr<std::unique_ptr<MpiCommunicator>> MpiCommunicator::Create(
    int* argc, char*** argv) {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (finalized) {
    return absl::FailedPreconditionError(
        "MpiCommunicator::Create: MPI was already finalized in this process, "
        "and MPI can be initialized only once; keep one MpiCommunicator for "
        "the life of the process");
  }
  int initialized = 0;
  MPI_Initialized(&initialized);
  int provided = MPI_THREAD_SINGLE;
  if (!initialized) {
    const int rc = MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided);
    if (rc != MPI_SUCCESS) {
      return MpiError(rc, "MPI_Init_thread", "MpiCommunicator::Create");
    }
  } else {
    MPI_Query_thread(&provided);
  }
  // From here on, errors must leave MPI as this function found it.
  const auto fail = [&](absl::Status status) {
    if (!initialized) MPI_Finalize();
    return status;
  };
  if (provided < MPI_THREAD_FUNNELED) {
    return fail(absl::FailedPreconditionError(absl::StrCat(
        "MpiCommunicator::Create: the MPI library provides thread level ",
        provided, ", below MPI_THREAD_FUNNELED (", MPI_THREAD_FUNNELED,
        "), which a process with compute threads needs")));
  }
  MPI_Comm comm = MPI_COMM_NULL;
  int rc = MPI_Comm_dup(MPI_COMM_WORLD, &comm);
  if (rc != MPI_SUCCESS) {
    return fail(MpiError(rc, "MPI_Comm_dup", "MpiCommunicator::Create"));
  }
  rc = MPI_Comm_set_errhandler(comm, MPI_ERRORS_RETURN);
  int rank = 0;
  int world_size = 0;
  if (rc == MPI_SUCCESS) rc = MPI_Comm_rank(comm, &rank);
  if (rc == MPI_SUCCESS) rc = MPI_Comm_size(comm, &world_size);
  if (rc != MPI_SUCCESS) {
    MPI_Comm_free(&comm);
    return fail(MpiError(rc, "MPI_Comm_set_errhandler/rank/size",
                         "MpiCommunicator::Create"));
  }
  return std::unique_ptr<MpiCommunicator>(
      new MpiCommunicator(comm, !initialized, rank, world_size));
}

MpiCommunicator::MpiCommunicator(MPI_Comm comm, bool finalize_mpi, int rank,
                                 int world_size)
    : comm_(comm),
      finalize_mpi_(finalize_mpi),
      rank_(rank),
      world_size_(world_size) {}

MpiCommunicator::~MpiCommunicator() {
  MPI_Comm_free(&comm_);
  if (finalize_mpi_) MPI_Finalize();
}

absl::Status MpiCommunicator::AllReduceSum(float* data, size_t n) {
  return AllReduceInChunks(comm_, data, n, MPI_FLOAT, "AllReduceSum");
}

absl::Status MpiCommunicator::AllReduceAvg(float* data, size_t n) {
  absl::Status status =
      AllReduceInChunks(comm_, data, n, MPI_FLOAT, "AllReduceAvg");
  if (!status.ok()) return status;
  const float size = static_cast<float>(world_size_);
  for (size_t i = 0; i < n; ++i) data[i] /= size;
  return absl::OkStatus();
}

absl::Status MpiCommunicator::AllReduceSum(double* data, size_t n) {
  return AllReduceInChunks(comm_, data, n, MPI_DOUBLE, "AllReduceSum(double)");
}

absl::Status MpiCommunicator::ReduceScatterSum(const float* send, float* recv,
                                               size_t recv_count) {
  const std::string op = Op("ReduceScatterSum", recv_count);
  if (recv_count > kMaxCount) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": shards of more than ", kMaxCount,
                     " elements are not supported by the MPI backend"));
  }
  if (recv_count == 0) return absl::OkStatus();
  const int count = static_cast<int>(recv_count);
  const size_t shard_bytes = recv_count * sizeof(float);
  if (recv == send + rank_ * recv_count) {
    // MPI_IN_PLACE takes the input from the receive buffer and leaves the
    // result at its start; move it to this rank's shard.
    float* buffer = recv - rank_ * recv_count;
    const int rc = MPI_Reduce_scatter_block(MPI_IN_PLACE, buffer, count,
                                            MPI_FLOAT, MPI_SUM, comm_);
    if (rc != MPI_SUCCESS) {
      return MpiError(rc, "MPI_Reduce_scatter_block", op);
    }
    if (rank_ != 0) std::memmove(recv, buffer, shard_bytes);
    return absl::OkStatus();
  }
  if (Overlap(send, shard_bytes * world_size_, recv, shard_bytes)) {
    return absl::InvalidArgumentError(absl::StrCat(
        op,
        ": recv overlaps send without being this rank's shard of it "
        "(in place means recv == send + rank * recv_count)"));
  }
  const int rc =
      MPI_Reduce_scatter_block(send, recv, count, MPI_FLOAT, MPI_SUM, comm_);
  if (rc != MPI_SUCCESS) return MpiError(rc, "MPI_Reduce_scatter_block", op);
  return absl::OkStatus();
}

absl::Status MpiCommunicator::AllGather(const float* send, float* recv,
                                        size_t send_count) {
  const std::string op = Op("AllGather", send_count);
  if (send_count > kMaxCount) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": shards of more than ", kMaxCount,
                     " elements are not supported by the MPI backend"));
  }
  if (send_count == 0) return absl::OkStatus();
  const int count = static_cast<int>(send_count);
  const size_t shard_bytes = send_count * sizeof(float);
  int rc = MPI_SUCCESS;
  if (send == recv + rank_ * send_count) {
    rc = MPI_Allgather(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, recv, count,
                       MPI_FLOAT, comm_);
  } else if (Overlap(send, shard_bytes, recv, shard_bytes * world_size_)) {
    return absl::InvalidArgumentError(absl::StrCat(
        op,
        ": send overlaps recv without being this rank's block of it "
        "(in place means send == recv + rank * send_count)"));
  } else {
    rc = MPI_Allgather(send, count, MPI_FLOAT, recv, count, MPI_FLOAT, comm_);
  }
  if (rc != MPI_SUCCESS) return MpiError(rc, "MPI_Allgather", op);
  return absl::OkStatus();
}

absl::Status MpiCommunicator::Broadcast(void* data, size_t bytes, int root) {
  const std::string op = absl::StrCat("Broadcast(bytes=", bytes, ")");
  if (root < 0 || root >= world_size_) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": root rank ", root, " does not exist in a world of ",
                     world_size_));
  }
  char* base = static_cast<char*>(data);
  for (size_t offset = 0; offset < bytes; offset += kMaxCount) {
    const size_t count = std::min(bytes - offset, kMaxCount);
    const int rc = MPI_Bcast(base + offset, static_cast<int>(count), MPI_BYTE,
                             root, comm_);
    if (rc != MPI_SUCCESS) return MpiError(rc, "MPI_Bcast", op);
  }
  return absl::OkStatus();
}

absl::Status MpiCommunicator::Barrier() {
  const int rc = MPI_Barrier(comm_);
  if (rc != MPI_SUCCESS) return MpiError(rc, "MPI_Barrier", "Barrier");
  return absl::OkStatus();
}

std::unique_ptr<PendingReduce> MpiCommunicator::StartAllReduceSum(float* data,
                                                                  size_t n) {
  std::vector<MPI_Request> requests;
  absl::Status status;
  for (size_t offset = 0; offset < n; offset += kMaxCount) {
    const size_t count = std::min(n - offset, kMaxCount);
    MPI_Request request = MPI_REQUEST_NULL;
    const int rc =
        MPI_Iallreduce(MPI_IN_PLACE, data + offset, static_cast<int>(count),
                       MPI_FLOAT, MPI_SUM, comm_, &request);
    if (rc != MPI_SUCCESS) {
      status = MpiError(rc, "MPI_Iallreduce", Op("StartAllReduceSum", n));
      break;
    }
    requests.push_back(request);
  }
  return std::make_unique<MpiPendingReduce>(std::move(requests),
                                            std::move(status), n);
}

void MpiCommunicator::Abort(int exit_code) {
  std::fflush(stdout);
  std::fflush(stderr);
  MPI_Abort(comm_, exit_code);
  // MPI_Abort does not return; should a broken MPI library return anyway, the
  // launcher still ends the job when this rank exits with an error.
  std::_Exit(exit_code);
}

}  // namespace prefopt::comm
