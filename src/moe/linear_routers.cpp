// Baseline routers; see linear_routers.h for sources.
#include "moe/linear_routers.h"

#include "model/decoder.h"

#include <cmath>
#include <limits>

namespace idamoe::moe {

namespace {

// Top-K expert choice from softmax probabilities. With a generator (training, gumbel_second_expert), ranks
// >= 2 are drawn as DeepSpeed v0.9.5 top2gating does: argmax of logits + Gumbel(0,1) noise with the rank-1
// expert excluded (protocol §3.4). Rows: idx_TK int64.
torch::Tensor pick_topk(const torch::Tensor & probs_TN, const torch::Tensor & logits_TN, int64_t K,
                        at::Generator * gumbel) {
    if (gumbel == nullptr || K == 1) return std::get<1>(probs_TN.detach().topk(K, 1));
    const torch::Tensor rank1_T1 = probs_TN.detach().argmax(1, /*keepdim=*/true);
    const torch::Tensor u_TN = uniform_on(logits_TN.sizes(), *gumbel, logits_TN.device()).clamp_min(1e-20);
    const torch::Tensor noisy_TN = (logits_TN.detach() - (-u_TN.log()).log())
                                       .scatter(1, rank1_T1, -std::numeric_limits<double>::infinity());
    return torch::cat({rank1_T1, std::get<1>(noisy_TN.topk(K - 1, 1))}, 1);
}

torch::Tensor renormalise(const torch::Tensor & g_TK) {  // DeepSpeed: g /= clamp(sum g, eps_fp32)
    return g_TK / g_TK.sum(1, /*keepdim=*/true).clamp_min(std::numeric_limits<float>::epsilon());
}

// The shared tail of linear_aux / st_moe / xmoe / deepseek: top-k on softmax(logits), gates, balance loss.
RouteOut softmax_topk_route(const MoeLayerConfig & cfg, const torch::Tensor & logits_TN, const torch::Tensor & w_T,
                            at::Generator * gumbel, bool renorm) {
    RouteOut out;
    const torch::Tensor probs_TN = torch::softmax(logits_TN, 1);
    out.idx_TK = pick_topk(probs_TN, logits_TN, cfg.top_k, gumbel);
    const torch::Tensor g_TK = probs_TN.gather(1, out.idx_TK);
    out.gates_TK = renorm ? renormalise(g_TK) : g_TK;
    out.probs_TN = probs_TN.detach();
    const torch::Tensor l_bal = balance_loss(probs_TN, out.idx_TK, w_T);
    out.loss = cfg.aux_coef * l_bal;
    out.parts["aux"] = l_bal.detach();
    return out;
}

}  // namespace

torch::Tensor balance_loss(const torch::Tensor & probs_TN, const torch::Tensor & idx_TK, const torch::Tensor & w_T) {
    const int64_t N = probs_TN.size(1), K = idx_TK.size(1);
    const torch::Tensor hits_TN = torch::zeros_like(probs_TN).scatter_add(
        1, idx_TK, torch::ones(idx_TK.sizes(), probs_TN.options()));  // delta_ti summed over the K ranks
    torch::Tensor n = torch::full({}, static_cast<double>(probs_TN.size(0)), probs_TN.options());
    torch::Tensor frac_N, p_N;
    if (w_T.defined()) {
        const torch::Tensor w_T1 = w_T.to(probs_TN.scalar_type()).unsqueeze(1);
        n = w_T1.sum().clamp_min(1.0);
        frac_N = (hits_TN * w_T1).sum(0) / n;
        p_N = (probs_TN * w_T1).sum(0) / n;
    } else {
        frac_N = hits_TN.mean(0);
        p_N = probs_TN.mean(0);
    }
    const torch::Tensor f_N = static_cast<double>(N) / static_cast<double>(K) * frac_N;  // eq. 10
    return (f_N.detach() * p_N).sum();                                                   // eq. 9, 11
}

LinearRouterImpl::LinearRouterImpl(const MoeLayerConfig & cfg) : RouterImpl(cfg) {
    wg = register_module("wg", torch::nn::Linear(torch::nn::LinearOptions(cfg.d_model, cfg.num_experts).bias(false)));
    init_linear_(wg, init_gen_);
}

RouteOut LinearRouterImpl::route(const torch::Tensor & x_TD, const torch::Tensor & w_T) {
    TORCH_CHECK(x_TD.dim() == 2 && x_TD.size(1) == cfg_.d_model, "router ", cfg_.router, " (layer ",
                cfg_.layer_index, "): expected x [T, ", cfg_.d_model, "], got ", x_TD.sizes());
    const RouterKind kind = router_kind(cfg_);
    const torch::Tensor logits_TN = wg->forward(x_TD.to(wg->weight.scalar_type()));
    at::Generator gen;
    const bool gumbel = is_training() && cfg_.gumbel_second_expert && kind != RouterKind::kDeepSeek;
    if (gumbel) gen = next_step_generator();
    RouteOut out = softmax_topk_route(cfg_, logits_TN, w_T, gumbel ? &gen : nullptr, kind != RouterKind::kDeepSeek);
    if (kind == RouterKind::kStMoe) {
        const torch::Tensor l_z = weighted_mean(torch::logsumexp(logits_TN, 1).square(), w_T);  // ST-MoE eq. 5
        out.loss = out.loss + cfg_.z_loss_coef * l_z;
        out.parts["z"] = l_z.detach();
    }
    return out;
}

XMoeRouterImpl::XMoeRouterImpl(const MoeLayerConfig & cfg) : RouterImpl(cfg) {
    proj = register_module("proj", torch::nn::Linear(torch::nn::LinearOptions(cfg.d_model, cfg.xmoe_dim).bias(false)));
    init_linear_(proj, init_gen_);
    expert_emb = register_parameter("expert_emb", torch::empty({cfg.num_experts, cfg.xmoe_dim}));
    {
        torch::NoGradGuard ng;
        expert_emb.normal_(0.0, 1.0, init_gen_);
    }
    log_temp = register_parameter("log_temp", torch::full({}, std::log(0.07)));
}

RouteOut XMoeRouterImpl::route(const torch::Tensor & x_TD, const torch::Tensor & w_T) {
    TORCH_CHECK(x_TD.dim() == 2 && x_TD.size(1) == cfg_.d_model, "router xmoe (layer ", cfg_.layer_index,
                "): expected x [T, ", cfg_.d_model, "], got ", x_TD.sizes());
    namespace F = torch::nn::functional;
    const auto nopt = F::NormalizeFuncOptions().dim(1).eps(1e-6);
    const torch::Tensor h_TR = F::normalize(proj->forward(x_TD.to(proj->weight.scalar_type())), nopt);
    const torch::Tensor e_NR = F::normalize(expert_emb, nopt);
    const torch::Tensor logits_TN = torch::mm(h_TR, e_NR.t()) / log_temp.exp();  // cosine / tau
    at::Generator gen;
    const bool gumbel = is_training() && cfg_.gumbel_second_expert;
    if (gumbel) gen = next_step_generator();
    return softmax_topk_route(cfg_, logits_TN, w_T, gumbel ? &gen : nullptr, /*renorm=*/true);
}

AuxFreeRouterImpl::AuxFreeRouterImpl(const MoeLayerConfig & cfg) : RouterImpl(cfg) {
    wg = register_module("wg", torch::nn::Linear(torch::nn::LinearOptions(cfg.d_model, cfg.num_experts).bias(false)));
    init_linear_(wg, init_gen_);
    expert_bias = register_buffer("expert_bias", torch::zeros({cfg.num_experts}));
}

RouteOut AuxFreeRouterImpl::route(const torch::Tensor & x_TD, const torch::Tensor & w_T) {
    TORCH_CHECK(x_TD.dim() == 2 && x_TD.size(1) == cfg_.d_model, "router auxfree (layer ", cfg_.layer_index,
                "): expected x [T, ", cfg_.d_model, "], got ", x_TD.sizes());
    RouteOut out;
    const torch::Tensor s_TN = torch::sigmoid(wg->forward(x_TD.to(wg->weight.scalar_type())));  // V3 eq. 15
    out.idx_TK = std::get<1>((s_TN.detach() + expert_bias.to(s_TN.scalar_type())).topk(cfg_.top_k, 1));  // V3 eq. 16
    out.gates_TK = renormalise(s_TN.gather(1, out.idx_TK));                                    // V3 eq. 13
    out.probs_TN = (s_TN / s_TN.sum(1, /*keepdim=*/true)).detach();
    out.loss = torch::zeros({}, s_TN.options());
    return out;
}

void AuxFreeRouterImpl::observe_load(const torch::Tensor & counts_E) {
    if (!is_training() || model::in_checkpoint_recompute()) return;  // once per real forward
    torch::NoGradGuard ng;
    const torch::Tensor c = counts_E.to(expert_bias.device(), expert_bias.scalar_type());
    expert_bias.add_(cfg_.bias_update_rate * torch::sign(c.mean() - c));  // V3 §2.1.2: overloaded -> lower bias
}

}  // namespace idamoe::moe
