// defines: Comm, Work, bind_local_device (see comm.h). The only file that includes c10d headers.
#include "dist/comm.h"

#include <torch/version.h>
// Gloo is compiled into LibTorch on Linux, but only Debian's CPU build gets USE_C10D_GLOO from our CMake;
// a LibTorch 2.x CUDA tree that ships the gloo headers can serve Gloo too (CPU tests in a CUDA build).
#if !defined(USE_C10D_GLOO) && defined(__has_include)
#if __has_include(<gloo/config.h>)
#define USE_C10D_GLOO 1
#endif
#endif
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#include <torch/csrc/distributed/c10d/Work.hpp>
// A pip LibTorch defines USE_C10D_GLOO but ships no gloo headers: Gloo is then not offered (NCCL only).
#if defined(USE_C10D_GLOO) && defined(__has_include)
#if !__has_include(<gloo/algorithm.h>)
#undef USE_C10D_GLOO
#endif
#endif
#ifdef USE_C10D_GLOO
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#endif
#ifdef IDAMOE_WITH_NCCL
#include <c10/cuda/CUDAFunctions.h>
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

#include <cstdlib>
#include <sstream>
#include <spdlog/spdlog.h>

namespace idamoe::dist {

// LibTorch 2.x split the user-facing ProcessGroup from the per-backend implementation (c10d::Backend);
// ProcessGroupGloo/NCCL derive from Backend there and from ProcessGroup in 1.13. Both bases carry the same
// collective signatures, so we hold the backend object directly and never build a 2.x ProcessGroup wrapper.
#if TORCH_VERSION_MAJOR >= 2
using PgBase = c10d::Backend;
#else
using PgBase = c10d::ProcessGroup;
#endif

namespace {

std::string first_line(const std::exception & e) {
    const c10::Error * ce = dynamic_cast<const c10::Error *>(&e);
    std::string msg = ce ? ce->what_without_backtrace() : e.what();
    auto nl = msg.find('\n');
    return nl == std::string::npos ? msg : msg.substr(0, nl);
}

std::string seconds_str(std::chrono::milliseconds t) {
    std::ostringstream ss;
    ss << t.count() / 1000.0;
    return ss.str();
}

std::vector<uint8_t> to_bytes(const std::string & s) { return std::vector<uint8_t>(s.begin(), s.end()); }
std::string from_bytes(const std::vector<uint8_t> & b) { return std::string(b.begin(), b.end()); }

c10d::ReduceOp to_c10d(ReduceOp op) {
    switch (op) {
        case ReduceOp::kSum: return c10d::ReduceOp::SUM;
        case ReduceOp::kMax: return c10d::ReduceOp::MAX;
        case ReduceOp::kMin: return c10d::ReduceOp::MIN;
    }
    return c10d::ReduceOp::SUM;
}

// Comma-separated indices of the keys not in the store; "" when the store itself is unreachable.
std::string missing_keys(c10d::Store & store, const std::vector<std::string> & keys) {
    std::string missing;
    try {
        for (size_t r = 0; r < keys.size(); ++r)
            if (!store.check({keys[r]})) missing += (missing.empty() ? "" : ",") + std::to_string(r);
    } catch (const std::exception &) {
        return "";
    }
    return missing;
}

// Staging chunk for broadcast_: big enough to amortise per-call latency, small enough not to double
// a multi-GB model's memory.
constexpr int64_t kBroadcastChunkBytes = 256ll << 20;

}  // namespace

struct Comm::Impl {
    c10::intrusive_ptr<c10d::Store> store;  // TCPStore: rendezvous + small host values
    c10::intrusive_ptr<PgBase> pg;          // Gloo or NCCL backend; null at world size 1
};

struct Work::Impl {
    c10::intrusive_ptr<c10d::Work> work;
    Comm * comm = nullptr;  // a Work must not outlive its Comm
    std::string what;
};

// ---------------------------------------------------------------------------------------------
// Work

bool Work::completed() const { return !impl_ || !impl_->work || impl_->work->isCompleted(); }

void Work::wait() {
    if (impl_ && impl_->work) wait(impl_->comm->timeout());
}

void Work::wait(std::chrono::milliseconds timeout) {
    if (!impl_ || !impl_->work) return;
    Comm & comm = *impl_->comm;
    try {
        impl_->work->wait(timeout);
    } catch (const std::exception & e) {
        comm.mark_failed();
        throw CommError("dist: " + impl_->what + " on rank " + std::to_string(comm.rank()) + "/" +
                        std::to_string(comm.world_size()) + " (" + comm.backend() + ") failed or did not finish " +
                        "within the timeout of " + seconds_str(timeout) + " s (dist.timeout_s): " + first_line(e) +
                        ". Another rank has probably died or hung; check its output.");
    }
    impl_->work.reset();
}

// ---------------------------------------------------------------------------------------------
// Comm: rendezvous, backend construction

Comm::Comm(const core::DistConfig & cfg, const LaunchEnv & env) : impl_(std::make_unique<Impl>()), env_(env) {
    if (cfg.timeout_s <= 0)
        throw std::runtime_error("dist: dist.timeout_s must be > 0, got " + std::to_string(cfg.timeout_s));
    timeout_ = std::chrono::milliseconds(cfg.timeout_s * 1000);

#ifdef IDAMOE_WITH_NCCL
    const bool have_nccl = true;
#else
    const bool have_nccl = false;
#endif
    std::string want = cfg.backend;
    if (want == "nccl" && !have_nccl)
        throw std::runtime_error("dist: dist.backend=nccl but this idamoe build has no CUDA/NCCL support "
                                 "(LibTorch without CUDA); use dist.backend=gloo or auto");
    if (want != "auto" && want != "gloo" && want != "nccl")
        throw std::runtime_error("dist: dist.backend must be auto|gloo|nccl, got '" + want + "'");
    if (want == "auto") want = (have_nccl && torch::cuda::is_available()) ? "nccl" : "gloo";
    device_ = bind_local_device(env_, want == "nccl");
    if (!env_.distributed()) return;  // world size 1: no store, no process group
    backend_ = want;

    // Rendezvous: rank 0 serves the TCPStore, everyone else connects to it.
    const std::string where = env_.master_addr + ":" + std::to_string(env_.master_port);
    try {
        c10d::TCPStoreOptions so;
        so.port = static_cast<uint16_t>(env_.master_port);
        so.isServer = env_.rank == 0;
        so.numWorkers = env_.world_size;
        so.waitWorkers = false;  // the join check below gives a better message than the store's own wait
        so.timeout = timeout_;
        impl_->store = c10::make_intrusive<c10d::TCPStore>(env_.master_addr, so);
    } catch (const std::exception & e) {
        failed_ = true;
        if (env_.rank == 0)
            throw CommError("dist: rank 0 could not serve the rendezvous store on " + where + ": " + first_line(e) +
                            " (port in use? set another MASTER_PORT)");
        throw CommError("dist: rank " + std::to_string(env_.rank) + " could not connect to the rendezvous store at " +
                        where + " within " + std::to_string(cfg.timeout_s) + " s: " + first_line(e) +
                        " (is rank 0 running, and are MASTER_ADDR/MASTER_PORT the same on every rank?)");
    }

    // Join check: every rank announces its world size; duplicates and disagreements are named.
    auto & store = *impl_->store;
    const std::string me = std::to_string(env_.rank);
    if (store.add("idamoe/claim/" + me, 1) != 1) {
        failed_ = true;
        throw CommError("dist: two processes claim rank " + me + " at " + where + " (check RANK / launcher)");
    }
    store.set("idamoe/world/" + me, to_bytes(std::to_string(env_.world_size)));
    std::vector<std::string> keys;
    for (int r = 0; r < env_.world_size; ++r) keys.push_back("idamoe/world/" + std::to_string(r));
    try {
        store.wait(keys, timeout_);
    } catch (const std::exception & e) {
        failed_ = true;
        const std::string missing = missing_keys(store, keys);
        if (missing.empty())
            throw CommError("dist: rank " + me + " lost the rendezvous store at " + where +
                            " while waiting for the other ranks to join: " + first_line(e) +
                            " (rank 0 has probably exited; see its output)");
        throw CommError("dist: rank " + me + " waited " + std::to_string(cfg.timeout_s) + " s at " + where +
                        " for ranks [" + missing + "] of " + std::to_string(env_.world_size) +
                        " to join; they never did (crashed, not launched, or launched with another WORLD_SIZE)");
    }
    for (int r = 0; r < env_.world_size; ++r) {
        const std::string theirs = from_bytes(store.get(keys[r]));
        if (theirs != std::to_string(env_.world_size)) {
            failed_ = true;
            throw CommError("dist: inconsistent world size: rank " + me + " has " +
                            std::to_string(env_.world_size) + ", rank " + std::to_string(r) + " has " + theirs);
        }
    }

    // The backend, on its own key prefix so its rendezvous keys cannot meet ours.
    c10::intrusive_ptr<c10d::Store> pg_store = c10::make_intrusive<c10d::PrefixStore>("idamoe/pg", impl_->store);
    try {
        if (backend_ == "gloo") {
#ifdef USE_C10D_GLOO
            auto opts = c10d::ProcessGroupGloo::Options::create(timeout_);
            // Ranks on one node talk over loopback (robust in containers whose hostname does not resolve);
            // across nodes, GLOO_SOCKET_IFNAME picks the NIC as in torch.distributed, else the hostname's.
            if (const char * ifname = std::getenv("GLOO_SOCKET_IFNAME"))
                opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(ifname));
            else if (!env_.multi_node)
                opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1"));
            else
                opts->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
            impl_->pg = c10::make_intrusive<c10d::ProcessGroupGloo>(pg_store, env_.rank, env_.world_size, opts);
#else
            throw std::runtime_error("this LibTorch build has no Gloo (USE_C10D_GLOO undefined); use dist.backend=nccl");
#endif
        } else {
#ifdef IDAMOE_WITH_NCCL
            // Without async error handling a dead peer leaves NCCL kernels spinning forever; with it the
            // watchdog aborts the communicator after the timeout (variable renamed in LibTorch 2.2).
            setenv("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1", 0);
            setenv("NCCL_ASYNC_ERROR_HANDLING", "1", 0);
            auto opts = c10d::ProcessGroupNCCL::Options::create();
            opts->timeout = timeout_;
            impl_->pg = c10::make_intrusive<c10d::ProcessGroupNCCL>(pg_store, env_.rank, env_.world_size, opts);
#endif
        }
    } catch (const std::exception & e) {
        failed_ = true;
        throw CommError("dist: rank " + me + " could not create the " + backend_ + " process group (rendezvous " +
                        where + "): " + first_line(e));
    }
    spdlog::debug("dist: {} backend {} device {}", env_.describe(), backend_, device_.str());
}

Comm::~Comm() {
    if (failed_ && impl_) {
        // Joining a worker thread stuck in a dead collective would hang the exit we are trying to make.
        if (impl_->pg) impl_->pg.release();
        if (impl_->store) impl_->store.release();
    }
}

// ---------------------------------------------------------------------------------------------
// Collectives

Work Comm::all_reduce_(torch::Tensor tensor, ReduceOp op, const std::string & what) {
    if (!impl_->pg) return Work{};
    TORCH_CHECK(tensor.device() == device_, "dist: ", what, ": tensor on ", tensor.device(), " but the ", backend_,
                " backend reduces on ", device_);
    TORCH_CHECK(tensor.is_contiguous() && tensor.layout() == torch::kStrided, "dist: ", what,
                ": all_reduce_ needs a dense contiguous tensor");
    c10d::AllreduceOptions opts;
    opts.reduceOp = to_c10d(op);
    opts.timeout = timeout_;
    std::vector<at::Tensor> one{tensor};
    Work w;
    w.impl_ = std::make_shared<Work::Impl>();
    w.impl_->comm = this;
    w.impl_->what = what;
    try {
        w.impl_->work = impl_->pg->allreduce(one, opts);
    } catch (const std::exception & e) {
        failed_ = true;
        throw CommError("dist: " + what + " on rank " + std::to_string(rank()) + " could not start: " + first_line(e));
    }
    return w;
}

void Comm::broadcast_(std::vector<torch::Tensor> & tensors, int root, const std::string & what) {
    if (!impl_->pg) return;
    torch::NoGradGuard no_grad;
    // Coalesce same-dtype runs into flat chunks: one collective per chunk, not per tensor.
    size_t i = 0;
    while (i < tensors.size()) {
        const auto dtype = tensors[i].scalar_type();
        size_t j = i;
        int64_t bytes = 0;
        std::vector<torch::Tensor> flat;
        while (j < tensors.size() && tensors[j].scalar_type() == dtype &&
               (flat.empty() || bytes + tensors[j].nbytes() <= kBroadcastChunkBytes)) {
            flat.push_back(tensors[j].detach().reshape(-1).to(device_));
            bytes += tensors[j].nbytes();
            ++j;
        }
        torch::Tensor buf = torch::cat(flat);
        c10d::BroadcastOptions opts;
        opts.rootRank = root;
        opts.timeout = timeout_;
        std::vector<at::Tensor> one{buf};
        Work w;
        w.impl_ = std::make_shared<Work::Impl>();
        w.impl_->comm = this;
        w.impl_->what = what;
        try {
            w.impl_->work = impl_->pg->broadcast(one, opts);
        } catch (const std::exception & e) {
            failed_ = true;
            throw CommError("dist: " + what + " on rank " + std::to_string(rank()) + " could not start: " +
                            first_line(e));
        }
        w.wait();
        int64_t off = 0;
        for (size_t k = i; k < j; ++k) {
            const int64_t n = tensors[k].numel();
            tensors[k].detach().copy_(buf.narrow(0, off, n).view(tensors[k].sizes()));
            off += n;
        }
        i = j;
    }
}

void Comm::barrier(const std::string & what) {
    if (!impl_->pg) return;
    // An all-reduce of one element: works the same on Gloo and NCCL, and is bounded by our timeout.
    auto one = torch::zeros({1}, torch::TensorOptions().device(device_));
    all_reduce_(one, ReduceOp::kSum, what).wait();
}

std::vector<std::string> Comm::all_gather_bytes(const std::string & mine, const std::string & what) {
    if (!impl_->store) return {mine};
    auto & store = *impl_->store;
    const std::string prefix = "idamoe/bytes/" + std::to_string(store_seq_++) + "/";
    std::vector<std::string> keys;
    for (int r = 0; r < world_size(); ++r) keys.push_back(prefix + std::to_string(r));
    try {
        store.set(keys[rank()], to_bytes(mine));
        store.wait(keys, timeout_);
    } catch (const std::exception & e) {
        failed_ = true;
        const std::string missing = missing_keys(store, keys);
        if (missing.empty())
            throw CommError("dist: " + what + " on rank " + std::to_string(rank()) + " lost the rendezvous store: " +
                            first_line(e) + " (rank 0 has probably exited; see its output)");
        throw CommError("dist: " + what + " on rank " + std::to_string(rank()) + " did not hear from ranks [" +
                        missing + "] within " + seconds_str(timeout_) + " s: " + first_line(e));
    }
    std::vector<std::string> out;
    for (const auto & k : keys) out.push_back(from_bytes(store.get(k)));
    // Everyone has read the previous call's keys once they all reached this one: rank 0 frees them.
    if (rank() == 0 && store_seq_ >= 2) {
        const std::string old = "idamoe/bytes/" + std::to_string(store_seq_ - 2) + "/";
        for (int r = 0; r < world_size(); ++r) store.deleteKey(old + std::to_string(r));
    }
    return out;
}

std::string Comm::broadcast_bytes(const std::string & blob, int root, const std::string & what) {
    // Through all_gather_bytes so the same sequence numbering and error reporting apply; only root sends.
    std::vector<std::string> all = all_gather_bytes(rank() == root ? blob : std::string(), what);
    return all.at(root);
}

// ---------------------------------------------------------------------------------------------

torch::Device bind_local_device(const LaunchEnv & env, bool want_cuda) {
#ifdef IDAMOE_WITH_NCCL
    if (want_cuda) {
        const int n = static_cast<int>(c10::cuda::device_count());
        TORCH_CHECK(n > 0, "dist: ", env.describe(), ": CUDA requested but no GPU is visible");
        const int idx = env.local_rank % n;
        c10::cuda::set_device(static_cast<c10::DeviceIndex>(idx));
        return torch::Device(torch::kCUDA, static_cast<c10::DeviceIndex>(idx));
    }
#endif
    return torch::kCPU;
}

}  // namespace idamoe::dist
