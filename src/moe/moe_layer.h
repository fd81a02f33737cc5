// defines: RoutingStats, MoeLayerImpl, RouterWarmupFfnImpl, upcycle, attach_router_warmup
//
// MoeLayerImpl sits in a decoder layer's `mlp` slot. Parameter names (relative to the slot, so that the
// full keys read model.layers.{l}.mlp.<name>):
//   experts.{i}.gate_proj.weight [F,D], experts.{i}.up_proj.weight [F,D], experts.{i}.down_proj.weight [D,F]
//   shared_experts.{s}.*  (deepseek only)
//   router.*              ida: router.encoder.*, router.decoder.*, router.gmm.{j}.{mix_logits,means,var_raw},
//                         router.rng_step (buffer); linear routers: router.wg.weight; see the router headers.
// RouterWarmupFfnImpl (stage 2) keeps the dense FFN's names (gate_proj.weight, ...) and the same router.*
// names, so stage 3 takes the warmed-up router over name for name.
//
// Shape legend: B batch, T tokens (or flattened rows), D model dim, N experts, K ranks, C GMM components.
#pragma once

#include <torch/torch.h>

#include <memory>
#include <vector>

#include "model/ffn.h"
#include "moe/config.h"
#include "moe/experts.h"
#include "moe/router.h"

namespace idamoe::moe {

// Per-layer routing statistics of the last forward (detached scalar tensors; .item() them when logging).
struct RoutingStats {
    torch::Tensor counts_E;        // real-token assignments per expert chosen by the router (before drops)
    torch::Tensor cv;              // std/mean of counts_E (unbiased std, as the authors' compute_cv), 0 = balanced
    torch::Tensor entropy;         // mean over real tokens of -sum_i p_i log2 p_i, bits (IDA-MoE §5.4: 0..log2 N)
    torch::Tensor drop_rate;       // dropped / routed real assignments (0 when dropless)
    torch::Tensor pi_min;          // smallest GMM mixing weight over all sets (undefined without GMM)
    torch::Tensor pi_small;        // number of components with pi < 1/(10*N*M), summed over sets
};

class MoeLayerImpl : public model::FfnImpl {
public:
    // Fresh experts (random init). `router` = nullptr builds the one the config names.
    explicit MoeLayerImpl(const MoeLayerConfig & cfg, std::shared_ptr<RouterImpl> router = nullptr);
    torch::Tensor forward(const torch::Tensor & x_BTD, const torch::Tensor & mask_BT) override;
    const model::FfnAux * aux() const override { return &aux_; }
    const RoutingStats & stats() const { return stats_; }
    const MoeLayerConfig & config() const { return cfg_; }

    std::vector<SwiGluFfnImpl *> expert_ptrs() const;
    torch::nn::ModuleList experts{nullptr}, shared_experts{nullptr};
    std::shared_ptr<RouterImpl> router;

private:
    MoeLayerConfig cfg_;
    model::FfnAux aux_;
    RoutingStats stats_;
};

// Stage-2 slot: dense FFN output, plus the router's losses and statistics (its routing decisions unused).
class RouterWarmupFfnImpl : public model::FfnImpl {
public:
    RouterWarmupFfnImpl(std::shared_ptr<model::FfnImpl> dense, const MoeLayerConfig & cfg);
    torch::Tensor forward(const torch::Tensor & x_BTD, const torch::Tensor & mask_BT) override;
    const model::FfnAux * aux() const override { return &aux_; }
    const RoutingStats & stats() const { return stats_; }

    std::shared_ptr<model::FfnImpl> dense;  // its children are registered here under their own names
    std::shared_ptr<RouterImpl> router;

private:
    MoeLayerConfig cfg_;
    model::FfnAux aux_;
    RoutingStats stats_;
};

// Sparse upcycling (Komatsuzaki et al. 2022; MoE-LLaVA protocol §3.2): every expert (and shared expert)
// starts as an exact copy of the dense FFN's gate_proj/up_proj/down_proj weights. If `dense` is a
// RouterWarmupFfnImpl, its FFN is copied and its (warmed-up) router is taken over as is.
// Throws std::invalid_argument naming the layer and expected shape when the dense FFN does not match cfg.
std::shared_ptr<model::FfnImpl> upcycle(const std::shared_ptr<model::FfnImpl> & dense, const MoeLayerConfig & cfg);
std::shared_ptr<model::FfnImpl> attach_router_warmup(const std::shared_ptr<model::FfnImpl> & dense,
                                                     const MoeLayerConfig & cfg);

}  // namespace idamoe::moe
