// defines: read_launch_env, launch_env_from (see launch_env.h for the rules)
#include "dist/launch_env.h"

#include <cerrno>
#include <cstdlib>
#include <stdexcept>

namespace idamoe::dist {
namespace {

using Getenv = std::function<const char *(const char *)>;

// An integer variable, or `fallback` when unset. A set-but-malformed value is an error, never ignored.
int int_var(const Getenv & env, const char * name, int fallback) {
    const char * v = env(name);
    if (v == nullptr || *v == '\0') return fallback;
    char * end = nullptr;
    errno = 0;
    long x = std::strtol(v, &end, 10);
    if (errno != 0 || end == v || *end != '\0' || x < 0 || x > 1000000)
        throw std::runtime_error(std::string("dist: environment variable ") + name + "='" + v +
                                 "' is not a non-negative integer");
    return static_cast<int>(x);
}

bool is_set(const Getenv & env, const char * name) {
    const char * v = env(name);
    return v != nullptr && *v != '\0';
}

// Fills rank/world/local fields from one launcher's variable names; returns false if its rank var is unset.
bool read_family(const Getenv & env, LaunchEnv & out, const char * launcher, const char * rank_var,
                 const char * size_var, const char * local_rank_var, const char * local_size_var) {
    if (!is_set(env, rank_var)) return false;
    if (!is_set(env, size_var))
        throw std::runtime_error(std::string("dist: ") + rank_var + " is set but " + size_var +
                                 " is not; the launcher must give both");
    out.launcher = launcher;
    out.rank = int_var(env, rank_var, 0);
    out.world_size = int_var(env, size_var, 1);
    out.local_rank = int_var(env, local_rank_var, -1);
    out.local_world_size = int_var(env, local_size_var, -1);
    return true;
}

}  // namespace

std::string LaunchEnv::describe() const {
    return "rank " + std::to_string(rank) + "/" + std::to_string(world_size) + " (local rank " +
           std::to_string(local_rank) + ", launcher " + launcher + ") rendezvous " + master_addr + ":" +
           std::to_string(master_port);
}

LaunchEnv launch_env_from(const Getenv & env) {
    LaunchEnv out;
    const bool found =
        read_family(env, out, "env", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE") ||
        read_family(env, out, "openmpi", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE",
                    "OMPI_COMM_WORLD_LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_SIZE") ||
        read_family(env, out, "pmi", "PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID", "MPI_LOCALNRANKS");
    if (!found) {
        if (is_set(env, "WORLD_SIZE") && int_var(env, "WORLD_SIZE", 1) > 1)
            throw std::runtime_error("dist: WORLD_SIZE=" + std::string(env("WORLD_SIZE")) +
                                     " but RANK is unset; set RANK for every process (scripts/launch_local.sh does)");
        return out;  // single process
    }
    if (out.world_size < 1)
        throw std::runtime_error("dist: world size must be >= 1, got " + std::to_string(out.world_size) +
                                 " (launcher " + out.launcher + ")");
    if (out.rank >= out.world_size)
        throw std::runtime_error("dist: rank " + std::to_string(out.rank) + " is not below world size " +
                                 std::to_string(out.world_size) + " (launcher " + out.launcher + ")");

    // Several nodes iff the launcher says fewer ranks live here than in the whole job.
    out.multi_node = out.local_world_size >= 0 && out.local_world_size != out.world_size;
    // Without a local rank, a single-node job's local rank is its global rank.
    if (out.local_rank < 0) out.local_rank = out.multi_node ? 0 : out.rank;

    if (is_set(env, "MASTER_ADDR")) {
        out.master_addr = env("MASTER_ADDR");
    } else if (out.multi_node) {
        throw std::runtime_error("dist: " + std::to_string(out.world_size) + " ranks span several nodes (" +
                                 std::to_string(out.local_world_size) + " on this node, launcher " + out.launcher +
                                 ") but MASTER_ADDR is unset; export it to rank 0's host (mpirun -x MASTER_ADDR)");
    }
    out.master_port = int_var(env, "MASTER_PORT", kDefaultMasterPort);
    if (out.master_port == 0 || out.master_port > 65535)
        throw std::runtime_error("dist: MASTER_PORT=" + std::to_string(out.master_port) + " is not a TCP port");
    return out;
}

LaunchEnv read_launch_env() {
    return launch_env_from([](const char * name) { return std::getenv(name); });
}

}  // namespace idamoe::dist
