// gmm_inspect: evaluates one stored GMM set on stored points through the router's own GMM functions.
#include <stdexcept>

#include "io/safetensors.h"
#include "moe/gmm.h"

namespace idamoe::moe {

namespace {
torch::Tensor need(const io::TensorMap & m, const std::string & file, const std::string & key) {
    auto it = m.find(key);
    if (it == m.end()) throw std::runtime_error("gmm_inspect: " + file + " has no tensor '" + key + "'");
    return it->second;
}
}  // namespace

void gmm_inspect(const std::string & params_path, const std::string & points_path, const std::string & out_path,
                 int64_t top_k) {
    const io::TensorMap params = io::load_safetensors(params_path), pts = io::load_safetensors(points_path);
    const torch::Tensor w_C = need(params, params_path, "weights").to(torch::kDouble);
    const torch::Tensor mu_CL = need(params, params_path, "means").to(torch::kDouble);
    const torch::Tensor var_CL = need(params, params_path, "variances").to(torch::kDouble);
    const torch::Tensor owner_C = need(params, params_path, "expert_of_component").to(torch::kLong);
    const torch::Tensor x_TL = need(pts, points_path, "points").to(torch::kDouble);
    const int64_t C = mu_CL.size(0);
    if (w_C.dim() != 1 || w_C.size(0) != C || owner_C.dim() != 1 || owner_C.size(0) != C)
        throw std::runtime_error("gmm_inspect: " + params_path + ": weights and expert_of_component must be [" +
                                 std::to_string(C) + "]");
    if ((var_CL <= 0).any().item<bool>()) throw std::runtime_error("gmm_inspect: " + params_path + ": variances must be > 0");
    if ((w_C <= 0).any().item<bool>()) throw std::runtime_error("gmm_inspect: " + params_path + ": weights must be > 0");
    const int64_t N = owner_C.max().item<int64_t>() + 1;
    if (top_k < 1 || top_k > N)
        throw std::runtime_error("gmm_inspect: --top-k must be in [1, " + std::to_string(N) + "], got " + std::to_string(top_k));

    // the training path: log pi + log N (GEMM expansion), logsumexp, posteriors, eq. 17-19
    const torch::Tensor log_wp_TC = gmm_log_weighted_prob(x_TL, (w_C / w_C.sum()).log(), mu_CL, var_CL);
    const torch::Tensor log_lik_T = torch::logsumexp(log_wp_TC, 1);
    const torch::Tensor log_post_TC = log_wp_TC - log_lik_T.unsqueeze(1);
    const torch::Tensor scores_TN = expert_log_scores(log_post_TC, N, owner_C);
    const TopK top = select_topk_experts(std::vector<torch::Tensor>(top_k, scores_TN), /*distinct=*/true);

    io::save_safetensors(out_path, {{"log_likelihood", log_lik_T.contiguous()},
                                    {"log_weighted_prob", log_wp_TC.contiguous()},
                                    {"log_posteriors", log_post_TC.contiguous()},
                                    {"posteriors", log_post_TC.exp().contiguous()},
                                    {"expert_log_scores", scores_TN.contiguous()},
                                    {"topk_experts", top.idx_TK.contiguous()},
                                    {"topk_gates", top.gates_TK.contiguous()}});
}

}  // namespace idamoe::moe
