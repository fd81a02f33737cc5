// defines: LinearRouterImpl (linear_aux, st_moe, deepseek), XMoeRouterImpl (xmoe), AuxFreeRouterImpl (auxfree),
//          balance_loss
//
// The baselines of IDA-MoE Table 2, behind the same RouterImpl interface. All of them are trained by the
// task loss through their gates (that coupling is what IDA-MoE removes); their logits are computed in
// fp32 like DeepSpeed's TopKGate (`wg` is fp32, input.float()).
//
// Shape legend: T rows, D model dim, N experts, K ranks, R xmoe routing dim.
#pragma once

#include "moe/router.h"

namespace idamoe::moe {

// Load-balancing loss, IDA-MoE eq. 9-11 (GShard/Switch form): sum_i f_i * p_i with
//   f_i = N/(K*T) * #{(t, j): idx_tj = i}  (all K choices, real rows),  p_i = mean_t probs_ti.
// Equals 1 at perfectly uniform routing. (DeepSpeed v0.9.5's top2gating counts top-1 choices only.)
torch::Tensor balance_loss(const torch::Tensor & probs_TN, const torch::Tensor & idx_TK, const torch::Tensor & w_T);

// linear_aux: MoE-LLaVA (arXiv:2401.15947) / GShard (arXiv:2006.16668) top-k softmax router,
//             gates renormalised over the K choices (DeepSpeed top2gating), + aux_coef * balance loss.
// st_moe:     the same + z_loss_coef * mean_t (logsumexp_i logits_ti)^2, ST-MoE eq. 5 (arXiv:2202.08906).
// deepseek:   DeepSeekMoE (arXiv:2401.06066) routed part: softmax top-k, gates NOT renormalised (its eq. 4-5),
//             expert-level balance loss with a small coefficient (0.001, IDA-MoE §5.2); the shared experts
//             live in the MoE layer.
class LinearRouterImpl : public RouterImpl {
public:
    explicit LinearRouterImpl(const MoeLayerConfig & cfg);
    RouteOut route(const torch::Tensor & x_TD, const torch::Tensor & w_T) override;
    torch::nn::Linear wg{nullptr};  // [N, D], no bias: router.wg.weight
};

// xmoe: X-MoE (Chi et al. 2022, arXiv:2204.09179 §3): project tokens to a low dimension R, score by cosine
// similarity with L2-normalised expert embeddings divided by a temperature (learnable, init 0.07 here),
// then the linear_aux gating and balance loss.
class XMoeRouterImpl : public RouterImpl {
public:
    explicit XMoeRouterImpl(const MoeLayerConfig & cfg);
    RouteOut route(const torch::Tensor & x_TD, const torch::Tensor & w_T) override;
    torch::nn::Linear proj{nullptr};  // [R, D]
    torch::Tensor expert_emb;         // [N, R]
    torch::Tensor log_temp;           // scalar
};

// auxfree: auxiliary-loss-free balancing (Wang et al. 2024, arXiv:2408.15664; DeepSeek-V3 arXiv:2412.19437
// §2.1.2): affinities s = sigmoid(logits); experts chosen by top-k of s + b (b only steers selection);
// gates = s of the chosen, renormalised; after each training forward b_i += rate * sign(mean load - load_i).
// No aux loss. Note: b is updated from this rank's counts; under data parallelism pass all-reduced
// counts to observe_load (or accept slightly different biases per rank).
class AuxFreeRouterImpl : public RouterImpl {
public:
    explicit AuxFreeRouterImpl(const MoeLayerConfig & cfg);
    RouteOut route(const torch::Tensor & x_TD, const torch::Tensor & w_T) override;
    void observe_load(const torch::Tensor & counts_E) override;
    torch::nn::Linear wg{nullptr};
    torch::Tensor expert_bias;  // buffer [N]
};

}  // namespace idamoe::moe
