// defines: RouteOut, RouterImpl (the interface every router implements), make_router, weighted_mean
//
// A router maps tokens x_TD to K expert choices per token and their gate weights, and reports its own
// auxiliary loss. Routers see every row of the flattened batch, padding included, plus a weight w_T
// (1 real, 0 padding): every loss and statistic is a w-weighted mean, so padding never counts, and the
// MoE layer never sends padding rows to an expert. (This avoids a host sync to compact the batch.)
//
// Shape legend: T rows (flattened B*T), D model dim, N experts, K ranks.
#pragma once

#include <torch/torch.h>

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "moe/config.h"

namespace idamoe::moe {

struct RouteOut {
    torch::Tensor idx_TK;      // int64 chosen experts, rank-ordered
    torch::Tensor gates_TK;    // combine weights; carry task-loss gradient only for task-trained routers
    torch::Tensor probs_TN;    // detached per-token routing distribution over all N experts (for entropy)
    torch::Tensor loss;        // weighted auxiliary loss (scalar), what the layer adds to CE
    std::map<std::string, torch::Tensor> parts;  // unweighted, detached scalar parts: "ae","gmm","react","aux","z"
};

class RouterImpl : public torch::nn::Module {
public:
    explicit RouterImpl(const MoeLayerConfig & cfg);
    // x_TD: [T, D] (any float dtype); w_T: [T] float 1/0, undefined = all rows real.
    virtual RouteOut route(const torch::Tensor & x_TD, const torch::Tensor & w_T) = 0;
    // Real-token assignments per expert of the forward that just ran (auxfree updates its bias from them).
    virtual void observe_load(const torch::Tensor & counts_E) {}
    // Mixing weights pi of each GMM set (detached), empty for routers without a GMM.
    virtual std::vector<torch::Tensor> mixing_weights() const { return {}; }

    const MoeLayerConfig & config() const { return cfg_; }

protected:
    // A CPU generator re-seeded from (seed, layer, step): reproducible and resumable from the `rng_step`
    // buffer alone. Each training call advances the step.
    at::Generator next_step_generator();
    // Uniform(-1/sqrt(fan_in), 1/sqrt(fan_in)) from the router's own generator (PyTorch's Linear default
    // bound), so that router init does not depend on or disturb the global RNG.
    void init_linear_(torch::nn::Linear & lin, at::Generator & gen);

    MoeLayerConfig cfg_;
    at::Generator init_gen_;
    torch::Tensor rng_step_;  // buffer [1] int64: training steps taken (saved with the checkpoint)
    int64_t step_ = 0;
    int64_t seen_version_ = -1;
};

// U[0,1) of the given shape drawn on the CPU from `gen` (reproducible), placed on `device` without a host
// sync (pinned + non_blocking for CUDA).
torch::Tensor uniform_on(torch::IntArrayRef sizes, at::Generator & gen, const torch::Device & device);

// w-weighted mean of v_T over real rows (plain mean when w_T is undefined); 0 when no row is real.
torch::Tensor weighted_mean(const torch::Tensor & v_T, const torch::Tensor & w_T);

std::shared_ptr<RouterImpl> make_router(const MoeLayerConfig & cfg);

}  // namespace idamoe::moe
