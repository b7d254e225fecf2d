#include "comm/launch_env.h"

#include <cstdlib>
#include <map>
#include <string>

#include "gtest/gtest.h"

namespace prefopt::comm {
namespace {

using Vars = std::map<std::string, std::string>;

// The error of `vars`, which must not parse.
std::string ErrorOf(const Vars& vars) {
  const absl::StatusOr<LaunchEnv> env = LaunchEnvFromVariables(vars);
  EXPECT_FALSE(env.ok()) << DescribeLaunchEnv(*env);
  if (env.ok()) return "";
  EXPECT_EQ(env.status().code(), absl::StatusCode::kInvalidArgument);
  return std::string(env.status().message());
}

void ExpectEnv(const Vars& vars, int rank, int world, int local_rank,
               int local_world, const std::string& launcher) {
  const absl::StatusOr<LaunchEnv> env = LaunchEnvFromVariables(vars);
  ASSERT_TRUE(env.ok()) << env.status();
  EXPECT_EQ(env->rank, rank);
  EXPECT_EQ(env->world_size, world);
  EXPECT_EQ(env->local_rank, local_rank);
  EXPECT_EQ(env->local_world_size, local_world);
  EXPECT_EQ(env->launcher, launcher);
}

Vars Mpirun() {
  return {{"OMPI_COMM_WORLD_RANK", "5"},
          {"OMPI_COMM_WORLD_SIZE", "16"},
          {"OMPI_COMM_WORLD_LOCAL_RANK", "5"},
          {"OMPI_COMM_WORLD_LOCAL_SIZE", "8"},
          {"PMIX_RANK", "5"}};
}

Vars Srun() {
  return {{"SLURM_PROCID", "9"},
          {"SLURM_NTASKS", "12"},
          {"SLURM_LOCALID", "1"},
          {"SLURM_NODEID", "2"},
          {"SLURM_STEP_TASKS_PER_NODE", "4(x2),3,1"}};
}

TEST(LaunchEnvTest, NoLauncherIsOneRank) {
  ExpectEnv({}, 0, 1, 0, 1, "none");
  ExpectEnv({{"SLURM_JOB_ID", "77"}, {"HOME", "/root"}}, 0, 1, 0, 1, "none");
}

TEST(LaunchEnvTest, Mpirun) { ExpectEnv(Mpirun(), 5, 16, 5, 8, "mpirun"); }

TEST(LaunchEnvTest, MpirunInsideSlurmJobIgnoresBatchStepVariables) {
  Vars vars = Mpirun();
  vars["SLURM_PROCID"] = "0";
  vars["SLURM_NTASKS"] = "2";
  vars["SLURM_LOCALID"] = "0";
  ExpectEnv(vars, 5, 16, 5, 8, "mpirun");
}

TEST(LaunchEnvTest, SrunWithStepTasksPerNode) {
  ExpectEnv(Srun(), 9, 12, 1, 3, "srun");
}

TEST(LaunchEnvTest, SrunStepVariablesWinOverJobVariables) {
  Vars vars = Srun();
  vars["SLURM_STEP_NUM_TASKS"] = "12";
  vars["SLURM_NTASKS"] = "32";          // the allocation, not this step
  vars["SLURM_NTASKS_PER_NODE"] = "8";  // likewise
  vars["PMIX_RANK"] = "9";
  ExpectEnv(vars, 9, 12, 1, 3, "srun");
}

TEST(LaunchEnvTest, SrunWithNtasksPerNodeOnly) {
  ExpectEnv({{"SLURM_PROCID", "3"},
             {"SLURM_NTASKS", "4"},
             {"SLURM_LOCALID", "1"},
             {"SLURM_NTASKS_PER_NODE", "2"}},
            3, 4, 1, 2, "srun");
}

TEST(LaunchEnvTest, MalformedValuesNameTheVariable) {
  for (const std::string bad :
       {"", "x", "-1", "+1", " 1", "1 ", "1.0", "99999999999", "0x10"}) {
    Vars vars = Mpirun();
    vars["OMPI_COMM_WORLD_LOCAL_RANK"] = bad;
    const std::string error = ErrorOf(vars);
    EXPECT_NE(error.find("OMPI_COMM_WORLD_LOCAL_RANK=\"" + bad + "\""),
              std::string::npos)
        << error;
  }
  Vars vars = Srun();
  vars["SLURM_STEP_TASKS_PER_NODE"] = "4(x2,3";
  EXPECT_NE(ErrorOf(vars).find("SLURM_STEP_TASKS_PER_NODE=\"4(x2,3\" is "
                               "malformed"),
            std::string::npos);
  vars["SLURM_STEP_TASKS_PER_NODE"] = "4(x0),3";
  EXPECT_NE(ErrorOf(vars).find("malformed"), std::string::npos);
  vars = Srun();
  vars["PMIX_RANK"] = "nine";
  EXPECT_NE(ErrorOf(vars).find("PMIX_RANK=\"nine\""), std::string::npos);
}

TEST(LaunchEnvTest, MissingCompanionVariable) {
  Vars vars = Mpirun();
  vars.erase("OMPI_COMM_WORLD_LOCAL_SIZE");
  EXPECT_NE(ErrorOf(vars).find("OMPI_COMM_WORLD_LOCAL_SIZE is not set"),
            std::string::npos);
  vars = Srun();
  vars.erase("SLURM_NTASKS");
  EXPECT_NE(ErrorOf(vars).find("SLURM_NTASKS is not set"), std::string::npos);
  vars = Srun();
  vars.erase("SLURM_STEP_TASKS_PER_NODE");
  EXPECT_NE(ErrorOf(vars).find("number of tasks on this node"),
            std::string::npos);
  EXPECT_NE(ErrorOf({{"PMIX_RANK", "0"}}).find("not supported"),
            std::string::npos);
}

TEST(LaunchEnvTest, InconsistentValues) {
  Vars vars = Mpirun();
  vars["OMPI_COMM_WORLD_RANK"] = "16";
  EXPECT_NE(ErrorOf(vars).find(
                "OMPI_COMM_WORLD_RANK=16 is not below OMPI_COMM_WORLD_SIZE=16"),
            std::string::npos);
  vars = Mpirun();
  vars["OMPI_COMM_WORLD_LOCAL_RANK"] = "8";
  EXPECT_NE(ErrorOf(vars).find("OMPI_COMM_WORLD_LOCAL_RANK=8 is not below"),
            std::string::npos);
  vars = Mpirun();
  vars["OMPI_COMM_WORLD_SIZE"] = "0";
  EXPECT_NE(ErrorOf(vars).find("OMPI_COMM_WORLD_SIZE=0"), std::string::npos);
  vars = Mpirun();
  vars["OMPI_COMM_WORLD_SIZE"] = "6";
  EXPECT_NE(ErrorOf(vars).find(
                "OMPI_COMM_WORLD_LOCAL_SIZE=8 exceeds OMPI_COMM_WORLD_SIZE=6"),
            std::string::npos);
  vars = Mpirun();
  vars["PMIX_RANK"] = "4";
  EXPECT_NE(
      ErrorOf(vars).find("PMIX_RANK=4 disagrees with OMPI_COMM_WORLD_RANK=5"),
      std::string::npos);
  vars = Srun();
  vars["SLURM_NODEID"] = "4";
  EXPECT_NE(ErrorOf(vars).find("SLURM_NODEID=4 is past the 4 nodes"),
            std::string::npos);
  vars = Srun();
  vars["SLURM_NTASKS"] = "13";
  EXPECT_NE(ErrorOf(vars).find("adds up to 12 tasks but SLURM_NTASKS=13"),
            std::string::npos);
  vars = Srun();
  vars["SLURM_LOCALID"] = "3";  // node 2 runs 3 tasks
  EXPECT_NE(ErrorOf(vars).find(
                "SLURM_LOCALID=3 is not below SLURM_STEP_TASKS_PER_NODE=3"),
            std::string::npos);
}

TEST(LaunchEnvTest, DetectReadsTheProcessEnvironment) {
  for (const char* name :
       {"OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE",
        "OMPI_COMM_WORLD_LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_SIZE",
        "SLURM_PROCID", "PMIX_RANK"}) {
    unsetenv(name);
  }
  setenv("SLURM_PROCID", "1", 1);
  setenv("SLURM_NTASKS", "2", 1);
  setenv("SLURM_LOCALID", "1", 1);
  setenv("SLURM_NTASKS_PER_NODE", "2", 1);
  unsetenv("SLURM_STEP_NUM_TASKS");
  unsetenv("SLURM_STEP_TASKS_PER_NODE");
  const absl::StatusOr<LaunchEnv> env = DetectLaunchEnv();
  ASSERT_TRUE(env.ok()) << env.status();
  EXPECT_EQ(DescribeLaunchEnv(*env),
            "rank 1 of 2 (local 1 of 2, launched by srun)");
}

}  // namespace
}  // namespace prefopt::comm
