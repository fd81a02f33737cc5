// defines: Comm, Work, ReduceOp, CommError, bind_local_device — the one door to c10d collectives
//
// Everything distributed in idamoe goes through dist::Comm: a c10d process group (ProcessGroupNCCL in CUDA
// builds, ProcessGroupGloo on CPU) behind a TCPStore rendezvous (rank 0 serves it). The class hides the
// API differences between LibTorch 1.13 (ProcessGroup) and 2.x (Backend); nothing else includes c10d headers.
//
// Failure behaviour: every wait is bounded by DistConfig::timeout_s. A rank that dies or hangs makes the
// others throw CommError naming the operation, the rank and the timeout instead of hanging. After such an
// error the Comm is poisoned: its process group is deliberately leaked at destruction, because c10d joins
// its worker threads there and a thread stuck in a dead collective would turn a clean exit into a hang.
//
// World size 1 needs no process group: collectives return immediately (a single-process run pays nothing).
#pragma once

#include <torch/torch.h>

#include <chrono>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "core/config.h"
#include "dist/launch_env.h"

namespace idamoe::dist {

// Any failed or timed-out collective / rendezvous. The message says which rank, which operation, and why.
struct CommError : std::runtime_error {
    using std::runtime_error::runtime_error;
};

// Gloo has no AVG: averaging is done by the caller (GradReducer divides by world_size).
enum class ReduceOp { kSum, kMax, kMin };

class Comm;

// Handle of an asynchronous collective. wait() blocks up to the Comm's timeout and rethrows failures as
// CommError. A default-constructed Work (and any Work at world size 1) is already complete.
class Work {
public:
    Work() = default;
    void wait();
    bool completed() const;

private:
    friend class Comm;
    struct Impl;
    std::shared_ptr<Impl> impl_;
};

class Comm {
public:
    // Rendezvous with the other ranks of `env` and build the backend `cfg.backend` asks for
    // (auto = nccl when this build has CUDA/NCCL and a GPU is visible, else gloo). Checks that every rank
    // agrees on the world size. Throws CommError / std::runtime_error with context.
    Comm(const core::DistConfig & cfg, const LaunchEnv & env);
    ~Comm();
    Comm(const Comm &) = delete;
    Comm & operator=(const Comm &) = delete;

    int rank() const { return env_.rank; }
    int world_size() const { return env_.world_size; }
    int local_rank() const { return env_.local_rank; }
    bool is_main() const { return env_.rank == 0; }        // rank 0: writes checkpoints and logs
    const LaunchEnv & env() const { return env_; }
    std::string backend() const { return backend_; }       // "gloo" | "nccl" | "none" (world size 1)
    torch::Device device() const { return device_; }       // where collective tensors must live
    std::chrono::milliseconds timeout() const { return timeout_; }

    // In-place all-reduce of ONE dense contiguous tensor on device(), asynchronous. (c10d's vector argument
    // means "one tensor per local device", not a list of buffers, so a list is flattened by the caller.)
    Work all_reduce_(torch::Tensor tensor, ReduceOp op, const std::string & what = "all_reduce");
    // Blocking, in place: every tensor receives root's values. Tensors may live anywhere (staged via device()).
    void broadcast_(std::vector<torch::Tensor> & tensors, int root = 0, const std::string & what = "broadcast");
    void barrier(const std::string & what = "barrier");

    // Small host values through the rendezvous store (config hashes, resume state, error strings).
    // Calls must happen in the same order on every rank.
    std::vector<std::string> all_gather_bytes(const std::string & mine, const std::string & what = "all_gather");
    std::string broadcast_bytes(const std::string & blob, int root = 0, const std::string & what = "broadcast_bytes");

    // Called by Work on failure; afterwards the process group is leaked instead of joined (see top).
    void mark_failed() { failed_ = true; }

private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
    LaunchEnv env_;
    std::string backend_ = "none";
    torch::Device device_ = torch::kCPU;
    std::chrono::milliseconds timeout_{300000};
    int64_t store_seq_ = 0;  // numbers store-based collectives so their keys never collide
    bool failed_ = false;
};

// Makes this rank's GPU (local_rank modulo visible GPUs) the current CUDA device and returns it; CPU
// when the build has no CUDA or `want_cuda` is false. NCCL needs one GPU per rank.
torch::Device bind_local_device(const LaunchEnv & env, bool want_cuda);

}  // namespace idamoe::dist
