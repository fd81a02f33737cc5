// defines: GradReducer, bucket_bytes (see grad_reducer.h for the design)
#include "dist/grad_reducer.h"

#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/function_hook.h>
#include <torch/csrc/autograd/variable.h>

#include <chrono>
#include <spdlog/spdlog.h>

namespace idamoe::dist {
namespace {

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

// Calls `fn` after the node ran, leaving its outputs as they are. Our own instead of LibTorch's
// utils::LambdaPostHook, whose 2.x header pulls in the compiled-autograd (dynamo) headers.
struct AfterAccumulate : torch::autograd::FunctionPostHook {
    explicit AfterAccumulate(std::function<void()> fn) : fn(std::move(fn)) {}
    torch::autograd::variable_list operator()(const torch::autograd::variable_list & outputs,
                                              const torch::autograd::variable_list &) override {
        fn();
        return outputs;
    }
    std::function<void()> fn;
};

}  // namespace

size_t bucket_bytes(const core::DistConfig & cfg) {
    TORCH_CHECK(cfg.bucket_mb > 0, "dist.bucket_mb must be > 0, got ", cfg.bucket_mb);
    return static_cast<size_t>(cfg.bucket_mb) << 20;
}

// A post-hook on a parameter's AccumulateGrad node: runs after autograd has added the step's gradient
// into .grad (our bucket view). We hold the node: a parameter keeps only a weak reference to it, and a
// new node (without our hook) would be made whenever no graph happens to hold the old one (as in DDP).
struct GradReducer::HookHandle {
    std::shared_ptr<torch::autograd::Node> accumulator;
    uintptr_t key = 0;
};

GradReducer::GradReducer(std::vector<torch::Tensor> params, Comm & comm, size_t bucket_bytes, bool overlap)
    : comm_(comm), overlap_(overlap), active_(comm.world_size() > 1) {
    TORCH_CHECK(bucket_bytes > 0, "dist::GradReducer: bucket size must be > 0 bytes");
    for (size_t i = 0; i < params.size(); ++i) {
        TORCH_CHECK(params[i].defined() && params[i].is_leaf(), "dist::GradReducer: parameter #", i,
                    " is undefined or not a leaf tensor");
        TORCH_CHECK(!active_ || !params[i].requires_grad() || params[i].device() == comm_.device(),
                    "dist::GradReducer: trainable parameter #", i, " is on ", params[i].device(), " but the ",
                    comm_.backend(), " backend reduces on ", comm_.device(), "; move the model there first");
    }

    // Same starting point everywhere (DDP does this in its constructor).
    comm_.broadcast_(params, 0, "initial parameter broadcast");

    // Buckets in reverse order; a new bucket on overflow or dtype/device change.
    for (auto it = params.rbegin(); it != params.rend(); ++it) {
        const torch::Tensor & p = *it;
        if (!p.requires_grad()) continue;
        const bool fresh = buckets_.empty() ||
            slots_[buckets_.back().slots.front()].param.scalar_type() != p.scalar_type() ||
            slots_[buckets_.back().slots.front()].param.device() != p.device() ||
            static_cast<size_t>((buckets_.back().n_grad_elems + p.numel()) * p.element_size()) > bucket_bytes;
        if (fresh) buckets_.emplace_back();
        Bucket & b = buckets_.back();
        Slot s;
        s.param = p;
        s.bucket = static_cast<int64_t>(buckets_.size()) - 1;
        s.offset = b.n_grad_elems;
        s.index_in_bucket = static_cast<int64_t>(b.slots.size());
        b.n_grad_elems += p.numel();
        b.slots.push_back(static_cast<int64_t>(slots_.size()));
        slots_.push_back(s);
    }
    stats_.n_params = static_cast<int64_t>(slots_.size());
    stats_.n_buckets = static_cast<int64_t>(buckets_.size());
    if (!active_) return;  // world size 1: autograd's own .grad is already the answer

    for (auto & b : buckets_) {
        const torch::Tensor & p0 = slots_[b.slots.front()].param;
        b.flat = torch::zeros({b.n_grad_elems + static_cast<int64_t>(b.slots.size())}, p0.options().requires_grad(false));
        stats_.bucket_bytes += b.flat.nbytes();
        for (int64_t k : b.slots) {
            Slot & s = slots_[k];
            s.view = b.flat.narrow(0, s.offset, s.param.numel()).view(s.param.sizes());
        }
    }
    for (size_t i = 0; i < slots_.size(); ++i) {
        auto h = std::make_unique<HookHandle>();
        h->accumulator = torch::autograd::impl::grad_accumulator(slots_[i].param);
        TORCH_CHECK(h->accumulator, "dist::GradReducer: no gradient accumulator for parameter slot ", i);
        h->key = h->accumulator->add_post_hook(
            std::make_unique<AfterAccumulate>([this, i] { on_accumulated(static_cast<int64_t>(i)); }));
        hooks_.push_back(std::move(h));
    }
    spdlog::debug("dist: GradReducer {} params in {} buckets ({:.1f} MB), overlap {}", stats_.n_params,
                  stats_.n_buckets, stats_.bucket_bytes / 1e6, overlap_);
}

GradReducer::~GradReducer() {
    // Collectives still in flight (an exception mid-step) hold their own references to the bucket
    // buffers, so nothing waits here: a dead peer must not stall the unwinding. .grad views stay valid.
    for (auto & h : hooks_) h->accumulator->del_post_hook(h->key);
}

// Makes .grad our bucket view again if the trainer unset or replaced it (zero_grad(set_to_none), or
// create_graph accumulation, which builds a new tensor instead of adding in place).
void GradReducer::claim_grad(Slot & s) {
    torch::NoGradGuard no_grad;
    torch::Tensor & g = s.param.mutable_grad();
    if (!g.defined()) {
        s.view.zero_();
        g = s.view;
    } else if (!g.is_same(s.view)) {
        s.view.copy_(g);
        g = s.view;
    }
}

void GradReducer::prepare(bool sync) {
    std::lock_guard<std::mutex> lock(mu_);
    prepared_ = true;
    if (!active_) return;
    TORCH_CHECK(!sync_, "dist::GradReducer: prepare() after a sync micro-step without finalize(); call finalize() "
                        "after the sync micro-step's backward");
    const bool starting = !step_open_;
    for (auto & s : slots_) {
        if (starting) {
            s.got_grad = false;
            s.view_installed = !s.param.grad().defined();
        }
        claim_grad(s);
        s.ready = false;
    }
    for (auto & b : buckets_) {
        b.pending = static_cast<int64_t>(b.slots.size());
        b.launched = false;
    }
    sync_ = sync;
    step_open_ = true;
    if (sync_) stats_.launched_in_backward_last = 0;
}

void GradReducer::on_accumulated(int64_t slot_idx) {
    std::lock_guard<std::mutex> lock(mu_);
    if (!step_open_) return;  // a backward outside prepare()/finalize(): nothing to track
    Slot & s = slots_[slot_idx];
    s.got_grad = true;
    claim_grad(s);
    if (!sync_) return;
    Bucket & b = buckets_[s.bucket];
    if (s.ready) {
        // A further gradient in the sync micro-step: already in the bucket, unless it is on the wire.
        TORCH_CHECK(!b.launched, "dist::GradReducer: parameter slot ", slot_idx, " (", s.param.sizes(),
                    ") got another gradient after its bucket was already all-reduced; in the sync micro-step "
                    "each parameter must get its whole gradient before its bucket fills, so run earlier "
                    "backward() calls under prepare(false)");
        return;
    }
    s.ready = true;
    --b.pending;
    if (overlap_) {
        const int64_t before = next_launch_;
        launch_ready_in_order();
        stats_.launched_in_backward_last += next_launch_ - before;
    }
}

void GradReducer::launch_ready_in_order() {
    while (next_launch_ < static_cast<int64_t>(buckets_.size()) && buckets_[next_launch_].pending == 0)
        launch(next_launch_++);
}

void GradReducer::launch(int64_t b) {
    Bucket & bk = buckets_[b];
    // The "had a gradient" counts travel in the same all-reduce as the gradients.
    std::vector<double> had;
    for (int64_t k : bk.slots) had.push_back(slots_[k].got_grad ? 1.0 : 0.0);
    {
        torch::NoGradGuard no_grad;
        bk.flat.narrow(0, bk.n_grad_elems, static_cast<int64_t>(had.size())).copy_(torch::tensor(had, torch::kDouble));
    }
    bk.work = comm_.all_reduce_(bk.flat, ReduceOp::kSum, "gradient all-reduce of bucket " + std::to_string(b) + "/" +
                                                             std::to_string(buckets_.size()));
    bk.launched = true;
}

void GradReducer::finalize() {
    const auto t_start = Clock::now();
    std::lock_guard<std::mutex> lock(mu_);
    TORCH_CHECK(prepared_, "dist::GradReducer: finalize() without prepare(); call prepare(sync) before backward");
    prepared_ = false;
    if (!active_ || !sync_) return;  // world size 1, or a non-final micro-step: nothing to reduce

    stats_.no_local_grad_last = 0;
    for (const auto & s : slots_) stats_.no_local_grad_last += s.got_grad ? 0 : 1;
    if (stats_.no_local_grad_last > 0) stats_.steps_with_no_local_grad += 1;
    // What backward did not reach (unused here, or everything when overlap is off) goes as it stands:
    // the earlier micro-steps' sum, or zeros.
    for (auto & s : slots_) {
        if (s.ready) continue;
        s.ready = true;
        --buckets_[s.bucket].pending;
    }
    launch_ready_in_order();

    const auto t_wait = Clock::now();
    for (auto & b : buckets_) b.work.wait();
    stats_.wait_s_last = seconds_since(t_wait);

    torch::NoGradGuard no_grad;
    const double world = static_cast<double>(comm_.world_size());
    for (auto & b : buckets_) {
        // One host read per bucket (not per parameter) for the "had a gradient" counts.
        const torch::Tensor had = b.flat.narrow(0, b.n_grad_elems, static_cast<int64_t>(b.slots.size()))
                                      .to(torch::kCPU, torch::kDouble, /*non_blocking=*/false, /*copy=*/true);
        const double * had_p = had.data_ptr<double>();
        b.flat.narrow(0, 0, b.n_grad_elems).div_(world);  // .grad views now hold the average
        for (int64_t k : b.slots) {
            Slot & s = slots_[k];
            // No rank had a gradient and .grad was unset at the start: unset again, as one process would.
            if (had_p[s.index_in_bucket] == 0.0 && s.view_installed) s.param.mutable_grad() = torch::Tensor();
        }
    }
    next_launch_ = 0;
    sync_ = false;
    step_open_ = false;
    stats_.steps += 1;
    stats_.wait_s_total += stats_.wait_s_last;
    stats_.finalize_s_last = seconds_since(t_start);
    stats_.finalize_s_total += stats_.finalize_s_last;
}

}  // namespace idamoe::dist
