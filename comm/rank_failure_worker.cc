// One rank fails mid-run while rank 0 waits for it inside a collective; run
// under mpirun by rank_failure_test.sh, which checks that the whole job ends
// non-zero within a bounded time instead of hanging. Modes (argv[1]):
//   exit       the last rank calls _exit(3), as a crash that skips cleanup
//   sigkill    the last rank is killed by SIGKILL, as the OOM killer does
//   abort_all  the last rank hits an error and calls AbortAll
//   mismatch   the ranks disagree on a fingerprint: every rank gets the
//              error from CheckSameAcrossRanks and calls AbortAll
//   wait       as exit, with rank 0 waiting on a non-blocking all-reduce
#include <signal.h>
#include <unistd.h>

#include <cstdint>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "comm/communicator.h"
#include "comm/create_communicator.h"
#include "comm/failure.h"
#include "comm/launch_env.h"

namespace prefopt::comm {
namespace {

// The failing rank's part: it never joins the collective rank 0 waits in.
void Fail(Communicator& comm, const std::string& mode) {
  // Let rank 0 block in its collective first.
  sleep(1);
  std::cerr << "rank " << comm.rank() << " fails now (" << mode << ")"
            << std::endl;
  if (mode == "exit" || mode == "wait") _exit(3);
  if (mode == "sigkill") raise(SIGKILL);
  AbortAll(comm, absl::InternalError("simulated data error on this rank"));
}

int Run(int argc, char** argv) {
  const std::string mode = argc > 1 ? argv[1] : "";
  absl::StatusOr<LaunchEnv> env = DetectLaunchEnv();
  if (!env.ok()) {
    std::cerr << env.status() << "\n";
    return 2;
  }
  absl::StatusOr<std::unique_ptr<Communicator>> created =
      CreateCommunicator(*env, Device::kCpu, &argc, &argv);
  if (!created.ok()) {
    std::cerr << created.status() << "\n";
    return 2;
  }
  Communicator& comm = **created;
  std::vector<float> grads(1 << 16, 1.0f);
  absl::Status s = comm.AllReduceSum(grads.data(), grads.size());
  if (!s.ok()) AbortAll(comm, s);
  std::cerr << "rank " << comm.rank() << ": first all-reduce done" << std::endl;

  if (mode == "mismatch") {
    s = CheckSameAcrossRanks(comm, comm.rank() == 0 ? 111 : 222, "config hash");
    if (!s.ok()) AbortAll(comm, s);
  } else if (comm.rank() == comm.world_size() - 1) {
    Fail(comm, mode);
  } else if (mode == "wait") {
    std::cerr << "rank 0 waits in PendingReduce::Wait" << std::endl;
    s = comm.StartAllReduceSum(grads.data(), grads.size())->Wait();
    if (!s.ok()) AbortAll(comm, s);
  } else {
    std::cerr << "rank 0 waits in AllReduceSum" << std::endl;
    s = comm.AllReduceSum(grads.data(), grads.size());
    if (!s.ok()) AbortAll(comm, s);
  }
  std::cerr << "rank " << comm.rank() << " finished (mode \"" << mode
            << "\" should not get here)" << std::endl;
  return 0;
}

}  // namespace
}  // namespace prefopt::comm

int main(int argc, char** argv) { return prefopt::comm::Run(argc, argv); }
