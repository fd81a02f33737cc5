// IDA-MoE router; see ida_router.h for the gradient-flow contract and the autoencoder choice.
#include "moe/ida_router.h"

#include "core/autocast.h"

#include <cmath>

namespace idamoe::moe {

namespace {
// Large finite stand-in for -inf: a masked-out component keeps exact-zero weight in logsumexp and its
// gradient, but an empty mask gives a finite value (then multiplied by 0) instead of NaN.
constexpr double kMaskedLog = -1e30;
}  // namespace

IdaRouterImpl::IdaRouterImpl(const MoeLayerConfig & cfg) : RouterImpl(cfg) {
    const int64_t D = cfg.d_model, H = cfg.ae_hidden, L = cfg.latent_dim;
    const int64_t C = cfg.num_experts * cfg.centers_per_expert;
    torch::nn::Linear enc1(D, H), enc2(H, L), dec1(L, H), dec2(H, D);
    for (auto * lin : {&enc1, &enc2, &dec1, &dec2}) init_linear_(*lin, init_gen_);
    encoder = register_module("encoder", torch::nn::Sequential(
        // no affine on the input LN: the next Linear absorbs scale and shift, and without LN parameters the
        // backward never needs d/d u (u is detached), which saves one [T,D]x[D,H] GEMM and the LN backward
        torch::nn::LayerNorm(torch::nn::LayerNormOptions({D}).elementwise_affine(false)), enc1, torch::nn::GELU(),
        torch::nn::LayerNorm(torch::nn::LayerNormOptions({H})), enc2));
    decoder = register_module("decoder", torch::nn::Sequential(dec1, torch::nn::GELU(), dec2));
    gmm = register_module("gmm", torch::nn::ModuleList());
    for (int64_t j = 0; j < cfg.top_k; ++j)  // k independent GMM sets, one per rank (§4.2)
        gmm->push_back(GmmSet(C, L, cfg.variance_floor, init_gen_));
}

torch::Tensor IdaRouterImpl::encode(const torch::Tensor & u_TD) {
    return encoder->forward(u_TD.detach().to(gmm_set(0).means.scalar_type()));
}

RouteOut IdaRouterImpl::route(const torch::Tensor & x_TD, const torch::Tensor & w_T) {
    const int64_t D = cfg_.d_model, N = cfg_.num_experts, K = cfg_.top_k;
    const int64_t C = N * cfg_.centers_per_expert;
    TORCH_CHECK(x_TD.dim() == 2 && x_TD.size(1) == D, "ida router (layer ", cfg_.layer_index, "): expected x [T, ",
                D, "], got ", x_TD.sizes());
    RouteOut out;
    // Under bf16 autocast the AE/GMM math would drop to bf16; it stays fp32 (core/autocast.h).
    const core::Fp32Region fp32_region;

    // eq. 12-13: autoencoder on sg(u); L_AE = mean over real rows of the per-row MSE
    const torch::Tensor u_TD = x_TD.detach().to(gmm_set(0).means.scalar_type());  // router dtype: fp32 (fp64 in tests)
    const torch::Tensor z_TL = encoder->forward(u_TD);
    const torch::Tensor recon_TD = decoder->forward(z_TL);
    const torch::Tensor l_ae = weighted_mean((recon_TD - u_TD).square().mean(1), w_T);

    // eq. 15-18, per GMM set j, on sg(z): the GMM does not train the encoder
    const torch::Tensor zs_TL = z_TL.detach();
    at::Generator gen;
    const bool react = is_training() && cfg_.reactivation;
    if (react) gen = next_step_generator();
    const auto gdt = gmm_set(0).means.scalar_type();  // fp32 (fp64 in tests), never lower
    torch::Tensor l_gmm = torch::zeros({}, zs_TL.options().dtype(gdt));
    torch::Tensor l_react = torch::zeros_like(l_gmm);
    std::vector<torch::Tensor> scores_TN;
    torch::Tensor probs_TN;
    for (int64_t j = 0; j < K; ++j) {
        GmmSetImpl & g = gmm_set(j);
        const torch::Tensor log_wp_TC = g.log_weighted_prob(zs_TL);  // log pi_c + log N(z | mu_c, var_c)
        const torch::Tensor log_lik_T = torch::logsumexp(log_wp_TC, 1);
        l_gmm = l_gmm + weighted_mean(-log_lik_T, w_T).to(l_gmm.scalar_type());  // eq. 15

        if (react) {
            // eq. 22: component c is "slow" with probability ReLU(1 - N*M*pi_c)
            const torch::Tensor pi_C = g.log_pi().detach().exp();
            const torch::Tensor p_slow_C = torch::relu(1.0 - static_cast<double>(C) * pi_C);
            const torch::Tensor slow_C = uniform_on({C}, gen, p_slow_C.device()) < p_slow_C;
            // eq. 23 with the mixing weights renormalised within the flagged subset S:
            //   -log sum_{c in S} (pi_c / sum_{c' in S} pi_c') N(z | mu_c, var_c)
            const torch::Tensor log_pi_C = g.log_pi();
            const torch::Tensor lse_pi_S = torch::logsumexp(log_pi_C.masked_fill(~slow_C, kMaskedLog), 0);
            const torch::Tensor lse_wp_T = torch::logsumexp(log_wp_TC.masked_fill(~slow_C.unsqueeze(0), kMaskedLog), 1);
            const torch::Tensor any_slow = slow_C.any().to(log_wp_TC.scalar_type());
            l_react = l_react + (any_slow * weighted_mean(lse_pi_S - lse_wp_T, w_T)).to(l_react.scalar_type());
        }

        // eq. 16-17 on detached posteriors: routing carries no gradient
        const torch::Tensor log_post_TC = (log_wp_TC - log_lik_T.unsqueeze(1)).detach();
        scores_TN.push_back(expert_log_scores(log_post_TC, N));
        torch::Tensor p_TN = log_post_TC.exp().view({-1, N, cfg_.centers_per_expert}).sum(2);  // P_j(i | z)
        probs_TN = probs_TN.defined() ? probs_TN + p_TN : p_TN;
    }

    // eq. 18-19: rank j takes the best expert of set j (distinct from ranks < j); gates = softmax(P*)
    TopK top = select_topk_experts(scores_TN, cfg_.distinct_experts);
    out.idx_TK = top.idx_TK;
    out.gates_TK = top.gates_TK;
    // Routing distribution for the entropy statistic: the average over the k sets of the expert
    // posteriors, so two decisive sets on two distinct experts give 1 bit (the paper's §5.4 ideal).
    out.probs_TN = probs_TN / static_cast<double>(K);

    // eq. 24 without CE: alpha L_AE + beta sum_j (L_GMM,j + L_react,j); every term is a mean over real rows
    out.loss = cfg_.alpha * l_ae.to(gdt) + cfg_.beta * (l_gmm + l_react);
    out.parts["ae"] = l_ae.detach();
    out.parts["gmm"] = l_gmm.detach();
    out.parts["react"] = l_react.detach();
    return out;
}

std::vector<torch::Tensor> IdaRouterImpl::mixing_weights() const {
    std::vector<torch::Tensor> out;
    for (const auto & m : *gmm) out.push_back(m->as<GmmSetImpl>()->log_pi().detach().exp());
    return out;
}

void IdaRouterImpl::init_means_from_data(const torch::Tensor & x_TD, const torch::Tensor & w_T) {
    torch::NoGradGuard ng;
    torch::Tensor x = x_TD.reshape({-1, cfg_.d_model});
    if (w_T.defined()) x = x.index_select(0, (w_T.reshape({-1}) > 0).nonzero().squeeze(1));
    TORCH_CHECK(x.size(0) > 0, "ida router (layer ", cfg_.layer_index, "): init_means_from_data got no real rows");
    const torch::Tensor z_TL = encode(x);
    for (int64_t j = 0; j < cfg_.top_k; ++j) {
        GmmSetImpl & g = gmm_set(j);
        const int64_t C = g.means.size(0);
        const torch::Tensor pick_C = torch::randint(z_TL.size(0), {C}, init_gen_, torch::kLong).to(z_TL.device());
        const torch::Tensor noise_CL = torch::randn(g.means.sizes(), init_gen_).to(z_TL.device());
        const torch::Tensor scale_L = z_TL.std(0, /*unbiased=*/false).clamp_min(1e-3);
        g.means.copy_(z_TL.index_select(0, pick_C) + 0.1 * noise_CL * scale_L);
    }
}

}  // namespace idamoe::moe
