// defines: GradReducer (see grad_reducer.h for the design)
#include "dist/grad_reducer.h"

#include <chrono>
#include <spdlog/spdlog.h>

namespace idamoe::dist {
namespace {

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

}  // namespace

GradReducer::GradReducer(std::vector<torch::Tensor> params, Comm & comm, size_t bucket_bytes, bool overlap)
    : comm_(comm), overlap_(overlap) {
    TORCH_CHECK(bucket_bytes > 0, "dist::GradReducer: bucket size must be > 0 bytes");
    for (size_t i = 0; i < params.size(); ++i)
        TORCH_CHECK(params[i].defined() && params[i].is_leaf(), "dist::GradReducer: parameter #", i,
                    " is undefined or not a leaf tensor");

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
    for (auto & b : buckets_) {
        const torch::Tensor & p0 = slots_[b.slots.front()].param;
        // Reduced on the comm device (the params' own device in a normal run: GPU with NCCL, CPU with Gloo).
        b.flat = torch::zeros({b.n_grad_elems + static_cast<int64_t>(b.slots.size())},
                              torch::TensorOptions().dtype(p0.scalar_type()).device(comm_.device()));
        stats_.bucket_bytes += b.flat.nbytes();
    }
    stats_.n_params = static_cast<int64_t>(slots_.size());
    stats_.n_buckets = static_cast<int64_t>(buckets_.size());

    if (overlap_ && comm_.world_size() > 1) {
        for (size_t i = 0; i < slots_.size(); ++i) {
            torch::Tensor p = slots_[i].param;
            // A leaf's hook sees the step's summed gradient once, before it is accumulated into .grad.
            unsigned h = p.register_hook([this, i](const torch::Tensor & grad) { on_grad(static_cast<int64_t>(i), grad); });
            hooks_.emplace_back(p, h);
        }
    }
    spdlog::debug("dist: GradReducer {} params in {} buckets ({:.1f} MB), overlap {}", stats_.n_params,
                  stats_.n_buckets, stats_.bucket_bytes / 1e6, overlap_);
}

GradReducer::~GradReducer() {
    for (auto & [p, h] : hooks_) {
        try {
            p.remove_hook(h);
        } catch (...) {
        }
    }
    // Unfinished collectives write into our buffers: let them end (bounded by the timeout) before freeing.
    for (auto & b : buckets_) {
        try {
            b.work.wait();
        } catch (...) {
        }
    }
}

void GradReducer::prepare(bool sync) {
    std::lock_guard<std::mutex> lock(mu_);
    TORCH_CHECK(next_launch_ == 0, "dist::GradReducer: prepare() called while buckets of the previous sync step are "
                                   "still in flight; call finalize() after the sync micro-step's backward");
    sync_ = sync && comm_.world_size() > 1;
    prepared_ = true;
    for (auto & s : slots_) s.ready = false;
    for (auto & b : buckets_) {
        b.pending = static_cast<int64_t>(b.slots.size());
        b.launched = false;
    }
}

// Writes this step's total gradient of one slot (accumulated .grad + incoming) into its bucket, and the
// slot's "had a gradient" flag. incoming == nullptr: the parameter got nothing in this backward.
void GradReducer::fill_slot(Slot & s, const torch::Tensor * incoming) {
    torch::NoGradGuard no_grad;
    Bucket & b = buckets_[s.bucket];
    torch::Tensor view = b.flat.narrow(0, s.offset, s.param.numel()).view(s.param.sizes());
    const torch::Tensor & acc = s.param.grad();  // earlier micro-steps' sum; not yet including `incoming`
    bool had = true;
    if (incoming != nullptr) {
        view.copy_(*incoming);
        if (acc.defined()) view.add_(acc);
    } else if (acc.defined()) {
        view.copy_(acc);
    } else {
        view.zero_();
        had = false;
    }
    b.flat.narrow(0, b.n_grad_elems + s.index_in_bucket, 1).fill_(had ? 1.0 : 0.0);
    s.ready = true;
    --b.pending;
}

void GradReducer::on_grad(int64_t slot_idx, const torch::Tensor & grad) {
    std::lock_guard<std::mutex> lock(mu_);
    if (!sync_) return;
    Slot & s = slots_[slot_idx];
    TORCH_CHECK(!s.ready, "dist::GradReducer: parameter #", slot_idx,
                " got a second gradient in one sync micro-step (two backward() calls after prepare(true)?); "
                "call prepare(true) once before the single backward of the last micro-step");
    TORCH_CHECK(grad.layout() == torch::kStrided, "dist::GradReducer: sparse gradients are not supported");
    fill_slot(s, &grad);
    launch_ready_in_order();
}

void GradReducer::launch_ready_in_order() {
    while (next_launch_ < static_cast<int64_t>(buckets_.size()) && buckets_[next_launch_].pending == 0)
        launch(next_launch_++);
}

void GradReducer::launch(int64_t b) {
    Bucket & bk = buckets_[b];
    bk.work = comm_.all_reduce_(bk.flat, ReduceOp::kSum, "gradient all-reduce of bucket " + std::to_string(b) + "/" +
                                                             std::to_string(buckets_.size()));
    bk.launched = true;
}

void GradReducer::finalize() {
    const auto t_start = Clock::now();
    std::lock_guard<std::mutex> lock(mu_);
    TORCH_CHECK(prepared_, "dist::GradReducer: finalize() without prepare(); call prepare(sync) before backward");
    prepared_ = false;
    if (!sync_) return;  // non-final micro-step, or world size 1: .grad already is the answer

    // Whatever backward did not reach (unused parameters, or everything when overlap is off).
    for (auto & s : slots_)
        if (!s.ready) fill_slot(s, nullptr);
    launch_ready_in_order();

    const auto t_wait = Clock::now();
    for (auto & b : buckets_) b.work.wait();
    stats_.wait_s_last = seconds_since(t_wait);

    torch::NoGradGuard no_grad;
    const double world = static_cast<double>(comm_.world_size());
    for (auto & b : buckets_) {
        // One host read per bucket (not per parameter) for the "had a gradient" counts.
        const torch::Tensor had = b.flat.narrow(0, b.n_grad_elems, static_cast<int64_t>(b.slots.size()))
                                      .to(torch::kCPU, torch::kDouble);
        const double * had_p = had.data_ptr<double>();
        torch::Tensor grads = b.flat.narrow(0, 0, b.n_grad_elems);
        grads.div_(world);
        for (int64_t k : b.slots) {
            Slot & s = slots_[k];
            // Globally unused: leave .grad undefined (optimizers then skip it, as in a single-process run).
            if (had_p[s.index_in_bucket] == 0.0) continue;
            torch::Tensor avg = grads.narrow(0, s.offset, s.param.numel()).view(s.param.sizes());
            torch::Tensor & g = s.param.mutable_grad();
            if (g.defined())
                g.copy_(avg);
            else
                g = avg.to(s.param.device(), /*non_blocking=*/false, /*copy=*/true);
        }
    }
    next_launch_ = 0;
    sync_ = false;
    stats_.steps += 1;
    stats_.wait_s_total += stats_.wait_s_last;
    stats_.finalize_s_last = seconds_since(t_start);
    stats_.finalize_s_total += stats_.finalize_s_last;
}

}  // namespace idamoe::dist
