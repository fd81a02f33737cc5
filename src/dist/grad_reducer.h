// defines: GradReducer, bucket_bytes — data-parallel gradient averaging in buckets, overlapped with backward
//
// LibTorch's C++ frontend has no DistributedDataParallel (pytorch/pytorch#48959); this is ours, after the
// c10d Reducer design (pytorch/pytorch PR #18251, DDP paper arXiv 2006.15704 §3.2):
//   - construction broadcasts every given parameter from rank 0, so all replicas start equal;
//   - trainable parameters (requires_grad) are packed, in REVERSE of the given order (backward produces
//     gradients roughly last-layer first), into flat buckets of about bucket_bytes;
//   - each parameter's .grad IS a view into its bucket (DDP's gradient_as_bucket_view): autograd
//     accumulates straight into the bucket, so there is no gradient copy and no second gradient-sized
//     buffer; prepare() re-installs the view if the trainer set .grad to none or replaced it;
//   - a post-hook on each parameter's AccumulateGrad node counts readiness; when a bucket's parameters
//     have all been accumulated it is all-reduced asynchronously while backward goes on;
//   - buckets are launched strictly in bucket order on every rank (collectives must match across ranks),
//     so a bucket waiting on an unused parameter holds back later ones until finalize() (DDP avoids this
//     by walking the graph first, find_unused_parameters; not done here: a MoE expert without tokens on
//     a rank is rare at real batch sizes, and it costs overlap, never correctness);
//   - finalize() launches what backward did not reach (an expert that received no tokens on this rank
//     contributes its accumulated gradient or zeros), waits, and divides by the world size in place.
//     A parameter that no rank produced a gradient for since the step began, and whose .grad was unset
//     at the start, gets an undefined .grad again, as in a single-process run (optimizers skip it); each
//     bucket carries one "had a gradient" count per parameter for this;
//   - gradient accumulation: prepare(false) on non-final micro-steps communicates nothing; .grad (the
//     bucket) accumulates locally and the sync micro-step reduces the total;
//   - in the sync micro-step each parameter must be accumulated before its bucket is launched: several
//     backward() calls are fine only while they touch buckets not yet reduced (else a clear error).
// The model never knows: hooks are attached from outside and removed by the destructor. At world size 1
// nothing is attached and prepare()/finalize() do nothing.
//
// Gradients are reduced in the parameters' dtype on comm.device(), where trainable parameters must live
// (Gloo's bf16 support is limited: keep fp32 master weights on CPU runs).
//
// Usage per optimizer step (grad_accum micro-steps):
//     for (m = 0; m < grad_accum; ++m) { reducer.prepare(m == grad_accum - 1); loss.backward(); }
//     reducer.finalize();   // .grad now holds the global average; clip, step, zero_grad as usual
// Keep .grad as given between finalize() and the next prepare() (in-place ops such as clipping are fine).
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

#include "core/config.h"
#include "dist/comm.h"

namespace idamoe::dist {

// dist.bucket_mb in bytes (checked > 0).
size_t bucket_bytes(const core::DistConfig & cfg);

class GradReducer {
public:
    struct Stats {
        int64_t n_params = 0;          // trainable parameters handled
        int64_t n_buckets = 0;
        int64_t bucket_bytes = 0;      // total bytes of all buckets (= the gradients' own memory)
        int64_t steps = 0;             // finalize() calls that communicated
        int64_t launched_in_backward_last = 0;  // buckets of the last step launched by hooks (overlapped)
        double wait_s_last = 0.0;      // finalize(): seconds blocked waiting on all-reduces, last step
        double wait_s_total = 0.0;
        double finalize_s_last = 0.0;  // finalize(): whole call (launch rest, wait, average)
        double finalize_s_total = 0.0;
        // Trainable tensors that got no gradient on THIS rank in the last step (an expert without tokens
        // here), and the number of steps that had any: how often the unused-parameter path really ran.
        int64_t no_local_grad_last = 0;
        int64_t steps_with_no_local_grad = 0;
    };

    // params: every parameter of the model in a deterministic order that is the same on all ranks
    // (e.g. module.named_parameters() order). Frozen ones (requires_grad false) are broadcast but never
    // reduced. overlap=false reduces only in finalize(), after backward (the baseline to compare with).
    GradReducer(std::vector<torch::Tensor> params, Comm & comm, size_t bucket_bytes, bool overlap);
    ~GradReducer();
    GradReducer(const GradReducer &) = delete;
    GradReducer & operator=(const GradReducer &) = delete;

    // Before each micro-step's backward. sync=false: this backward only accumulates locally.
    void prepare(bool sync);
    // After the sync micro-step's backward: waits for all buckets and leaves the average in .grad.
    // A no-op after a non-sync prepare(). Throws CommError (with the timeout) if a peer died or hung.
    void finalize();

    const Stats & stats() const { return stats_; }

private:
    struct Slot {                  // one trainable parameter's place in a bucket
        torch::Tensor param;
        torch::Tensor view;        // param-shaped view of the bucket: what .grad is set to
        int64_t bucket = 0;
        int64_t offset = 0;        // element offset in the bucket's flat buffer
        int64_t index_in_bucket = 0;
        bool got_grad = false;     // accumulated at least once since the step began (any micro-step)
        bool view_installed = false; // .grad was unset at the step's start and we installed the view
        bool ready = false;        // accumulated in the current sync micro-step
    };
    struct Bucket {
        torch::Tensor flat;        // [sum of numel | one "had a gradient" count per slot]
        std::vector<int64_t> slots;
        int64_t n_grad_elems = 0;
        int64_t pending = 0;       // slots not yet accumulated in this sync micro-step
        Work work;
        bool launched = false;
    };
    struct HookHandle;

    void on_accumulated(int64_t slot_idx);
    void claim_grad(Slot & s);
    void launch_ready_in_order();
    void launch(int64_t b);

    Comm & comm_;
    bool overlap_;
    bool active_;                  // world size > 1
    std::vector<Slot> slots_;
    std::vector<Bucket> buckets_;
    std::vector<std::unique_ptr<HookHandle>> hooks_;
    int64_t next_launch_ = 0;
    bool sync_ = false;
    bool step_open_ = false;       // a prepare() happened since the last finalize()
    bool prepared_ = false;
    std::mutex mu_;                // hooks run on autograd's device threads on CUDA
    Stats stats_;
};

}  // namespace idamoe::dist
