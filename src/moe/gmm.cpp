// GMM core of the IDA-MoE router; see gmm.h for the shape legend.
#include "moe/gmm.h"

#include <cmath>
#include <limits>

namespace idamoe::moe {

namespace {
constexpr double kLog2Pi = 1.8378770664093454835606594728112;  // log(2 pi)

torch::ScalarType at_least_fp32(torch::ScalarType t) {
    return t == torch::kDouble ? torch::kDouble : torch::kFloat;
}
}  // namespace

torch::Tensor gmm_log_weighted_prob(const torch::Tensor & z_TL, const torch::Tensor & log_pi_C,
                                    const torch::Tensor & means_CL, const torch::Tensor & var_CL) {
    TORCH_CHECK(z_TL.dim() == 2, "gmm: expected z [T, L], got ", z_TL.sizes());
    TORCH_CHECK(means_CL.dim() == 2 && means_CL.size(1) == z_TL.size(1),
                "gmm: expected means [C, ", z_TL.size(1), "], got ", means_CL.sizes());
    TORCH_CHECK(var_CL.sizes() == means_CL.sizes(), "gmm: expected variances ", means_CL.sizes(), ", got ",
                var_CL.sizes());
    TORCH_CHECK(log_pi_C.dim() == 1 && log_pi_C.size(0) == means_CL.size(0), "gmm: expected log weights [",
                means_CL.size(0), "], got ", log_pi_C.sizes());
    const auto dt = at_least_fp32(means_CL.scalar_type());
    const torch::Tensor z = z_TL.to(dt), mu = means_CL.to(dt), var = var_CL.to(dt);
    const int64_t L = z.size(1);

    // Shift both z and mu by a constant: (z - c) - (mu - c) = z - mu, but the expanded terms get smaller.
    const torch::Tensor center_L = mu.detach().mean(0);
    const torch::Tensor zc_TL = z - center_L, muc_CL = mu - center_L;
    const torch::Tensor prec_CL = var.reciprocal();

    // sum_l (z-mu)^2/var = z^2.(1/var)^T - 2 z.(mu/var)^T + sum mu^2/var     (GEMM expansion)
    torch::Tensor quad_TC = torch::mm(zc_TL.square(), prec_CL.t())
                          - 2.0 * torch::mm(zc_TL, (muc_CL * prec_CL).t())
                          + (muc_CL.square() * prec_CL).sum(1).unsqueeze(0);
    quad_TC = quad_TC.clamp_min(0.0);
    const torch::Tensor log_det_C = var.log().sum(1);
    // log N(z | mu, diag var) = -1/2 (quad + sum log var + L log 2 pi)        (Gaussian density, eq. 14)
    const torch::Tensor log_n_TC = -0.5 * (quad_TC + log_det_C.unsqueeze(0) + static_cast<double>(L) * kLog2Pi);
    return log_n_TC + log_pi_C.to(dt).unsqueeze(0);
}

torch::Tensor expert_log_scores(const torch::Tensor & log_post_TC, int64_t num_experts,
                                const torch::Tensor & expert_of_C) {
    const int64_t T = log_post_TC.size(0), C = log_post_TC.size(1);
    if (!expert_of_C.defined()) {
        TORCH_CHECK(C % num_experts == 0, "gmm: ", C, " components do not split evenly over ", num_experts,
                    " experts");
        return std::get<0>(log_post_TC.view({T, num_experts, C / num_experts}).max(2));  // eq. 17
    }
    TORCH_CHECK(expert_of_C.dim() == 1 && expert_of_C.size(0) == C, "gmm: expected expert_of_component [", C,
                "], got ", expert_of_C.sizes());
    torch::Tensor out_TN = torch::full({T, num_experts}, -std::numeric_limits<double>::infinity(),
                                       log_post_TC.options());
    const torch::Tensor idx_TC = expert_of_C.to(log_post_TC.device(), torch::kLong).unsqueeze(0).expand({T, C});
    return out_TN.scatter_reduce(1, idx_TC, log_post_TC, "amax", /*include_self=*/true);  // eq. 17
}

TopK select_topk_experts(const std::vector<torch::Tensor> & log_scores_per_rank_TN, bool distinct) {
    TORCH_CHECK(!log_scores_per_rank_TN.empty(), "gmm: select_topk_experts needs at least one rank");
    const auto & s0 = log_scores_per_rank_TN[0];
    const int64_t N = s0.size(1), K = static_cast<int64_t>(log_scores_per_rank_TN.size());
    TORCH_CHECK(!distinct || K <= N, "gmm: top_k = ", K, " distinct experts out of ", N);
    std::vector<torch::Tensor> idx, score;
    torch::Tensor taken_TN = torch::zeros_like(s0, torch::kBool);
    for (int64_t j = 0; j < K; ++j) {
        torch::Tensor s_TN = log_scores_per_rank_TN[j];
        if (distinct && j > 0) s_TN = s_TN.masked_fill(taken_TN, -std::numeric_limits<double>::infinity());
        torch::Tensor i_T1 = s_TN.argmax(1, /*keepdim=*/true);  // eq. 18; first maximum on ties
        idx.push_back(i_T1);
        score.push_back(log_scores_per_rank_TN[j].gather(1, i_T1));
        if (distinct) taken_TN = taken_TN.scatter(1, i_T1, true);
    }
    TopK out;
    out.idx_TK = torch::cat(idx, 1);
    out.log_scores_TK = torch::cat(score, 1);
    out.gates_TK = torch::softmax(out.log_scores_TK.exp(), 1);  // eq. 19: softmax over the K scores P*
    return out;
}

GmmSetImpl::GmmSetImpl(int64_t num_components, int64_t latent_dim, double floor, at::Generator gen)
    : variance_floor(floor) {
    TORCH_CHECK(num_components >= 1 && latent_dim >= 1, "gmm: need >= 1 component and latent dim, got ",
                num_components, ", ", latent_dim);
    TORCH_CHECK(floor > 0.0, "gmm: variance_floor must be > 0, got ", floor);
    mix_logits = register_parameter("mix_logits", torch::zeros({num_components}));
    means = register_parameter("means", torch::empty({num_components, latent_dim}));
    {
        torch::NoGradGuard ng;
        means.normal_(0.0, 1.0 / std::sqrt(double(latent_dim)), gen);
    }
    // softplus^-1(1) = log(e - 1): variances start at 1 (+ floor)
    var_raw = register_parameter("var_raw", torch::full({num_components, latent_dim}, std::log(std::exp(1.0) - 1.0)));
}

torch::Tensor GmmSetImpl::log_pi() const { return torch::log_softmax(mix_logits, 0); }

torch::Tensor GmmSetImpl::variances() const { return torch::softplus(var_raw) + variance_floor; }

torch::Tensor GmmSetImpl::log_weighted_prob(const torch::Tensor & z_TL) const {
    return gmm_log_weighted_prob(z_TL, log_pi(), means, variances());
}

}  // namespace idamoe::moe
