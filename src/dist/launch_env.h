// defines: LaunchEnv, read_launch_env, launch_env_from — who am I in the job, from the launcher's variables
//
// Three launchers are understood, tried in this order:
//   torchrun-style  RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT
//                   (scripts/launch_local.sh sets these; so do torchrun and most cluster wrappers)
//   Open MPI        OMPI_COMM_WORLD_RANK, OMPI_COMM_WORLD_SIZE, OMPI_COMM_WORLD_LOCAL_RANK, ..._LOCAL_SIZE
//   PMI (MPICH)     PMI_RANK, PMI_SIZE, MPI_LOCALRANKID, MPI_LOCALNRANKS
// With none of them the process is a single rank (world size 1) and needs no variables at all.
// MASTER_ADDR / MASTER_PORT, when set, always win. Under an MPI launcher on one node they default to
// 127.0.0.1:29500; on several nodes a missing MASTER_ADDR is an error, since no rank can guess rank 0's host.
#pragma once

#include <functional>
#include <string>

namespace idamoe::dist {

// c10d's default rendezvous port (torch.distributed's MASTER_PORT default).
constexpr int kDefaultMasterPort = 29500;

struct LaunchEnv {
    int rank = 0;
    int world_size = 1;
    int local_rank = 0;
    int local_world_size = 1;        // ranks on this node (-1 = launcher did not say)
    std::string master_addr = "127.0.0.1";
    int master_port = kDefaultMasterPort;
    std::string launcher = "single"; // single | env | openmpi | pmi — named in error messages
    bool multi_node = false;         // true when the launcher says ranks span several nodes

    bool distributed() const { return world_size > 1; }
    std::string describe() const;    // "rank 1/2 (local 1, openmpi) rendezvous 127.0.0.1:29500"
};

// Reads the real process environment. Throws std::runtime_error naming the variable on bad input.
LaunchEnv read_launch_env();
// Same, with a getenv replacement (returns nullptr for unset) so the rules can be unit-tested.
LaunchEnv launch_env_from(const std::function<const char *(const char *)> & getenv_fn);

}  // namespace idamoe::dist
