// defines: GradReducer — data-parallel gradient averaging in buckets, overlapped with backward
//
// LibTorch's C++ frontend has no DistributedDataParallel (pytorch/pytorch#48959); this is ours, after the
// c10d Reducer design (pytorch/pytorch PR #18251, DDP paper arXiv 2006.15704 §3.2):
//   - construction broadcasts every given parameter from rank 0, so all replicas start equal;
//   - trainable parameters (requires_grad) are packed, in REVERSE of the given order (backward produces
//     gradients roughly last-layer first), into flat buckets of about bucket_bytes;
//   - an autograd hook on each parameter copies its gradient into its bucket slot as soon as backward
//     produces it; when a bucket is complete it is all-reduced asynchronously while backward goes on;
//   - buckets are launched strictly in bucket order on every rank (collectives must match across ranks),
//     so a bucket waiting on an unused parameter holds back later ones until finalize();
//   - finalize() fills what never got a gradient this step (an expert that received no tokens on this
//     rank) with the gradient accumulated so far or zeros, launches the rest, waits, and writes the
//     average into every .grad. A parameter no rank produced a gradient for keeps an undefined .grad, as
//     a single-process run would (each bucket carries one "had a gradient" count per parameter for this);
//   - gradient accumulation: prepare(false) on non-final micro-steps skips all communication and lets
//     .grad accumulate locally; the sync micro-step reduces the accumulated total.
// The model never knows: hooks are attached from outside and removed by the destructor.
//
// Usage per optimizer step (grad_accum micro-steps):
//     for (m = 0; m < grad_accum; ++m) { reducer.prepare(m == grad_accum - 1); loss.backward(); }
//     reducer.finalize();   // .grad now holds the global average; clip, step, zero_grad as usual
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <mutex>
#include <vector>

#include "dist/comm.h"

namespace idamoe::dist {

class GradReducer {
public:
    struct Stats {
        int64_t n_params = 0;        // trainable parameters handled
        int64_t n_buckets = 0;
        int64_t bucket_bytes = 0;    // total bytes of all buckets
        int64_t steps = 0;           // finalize() calls that communicated
        double wait_s_last = 0.0;    // finalize(): seconds blocked waiting on all-reduces, last step
        double wait_s_total = 0.0;
        double finalize_s_last = 0.0;  // finalize(): whole call (fill, launch, wait, write .grad)
        double finalize_s_total = 0.0;
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
    // After the sync micro-step's backward: waits for all buckets and writes averaged gradients to .grad.
    // A no-op after a non-sync prepare(). Throws CommError (with the timeout) if a peer died or hung.
    void finalize();

    const Stats & stats() const { return stats_; }

private:
    struct Slot {           // one trainable parameter's place in a bucket
        torch::Tensor param;
        int64_t bucket = 0;
        int64_t offset = 0; // element offset in the bucket's flat buffer
        int64_t index_in_bucket = 0;
        bool ready = false;
    };
    struct Bucket {
        torch::Tensor flat;      // [sum of numel | one "had a gradient" count per slot]
        std::vector<int64_t> slots;
        int64_t n_grad_elems = 0;
        int64_t pending = 0;     // slots without a gradient yet this step
        Work work;
        bool launched = false;
    };

    void on_grad(int64_t slot_idx, const torch::Tensor & grad);
    void fill_slot(Slot & s, const torch::Tensor * incoming);
    void launch_ready_in_order();
    void launch(int64_t b);

    Comm & comm_;
    bool overlap_;
    std::vector<Slot> slots_;
    std::vector<Bucket> buckets_;
    std::vector<std::pair<torch::Tensor, unsigned>> hooks_;
    int64_t next_launch_ = 0;
    bool sync_ = false;
    bool prepared_ = false;
    std::mutex mu_;  // hooks run on autograd's device threads on CUDA
    Stats stats_;
};

}  // namespace idamoe::dist
