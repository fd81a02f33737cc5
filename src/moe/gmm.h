// defines: gmm_log_weighted_prob, expert_log_scores, select_topk_experts, TopK, GmmSetImpl, gmm_inspect
//
// The diagonal-GMM core of the IDA-MoE router (arXiv:2510.16448 eq. 14-19), as plain tensor functions
// that run in any floating dtype: training calls them in fp32 (never lower), gmm_inspect and the tests
// call them in fp64. Everything is in log space; probabilities are only exponentiated for the gates.
//
// Shape legend: T tokens, L latent dim, C = N*M components (component c belongs to expert c / M),
//               N experts, K ranks (top-k).
//   z_TL latent points, log_pi_C log mixing weights, means_CL, var_CL diagonal variances,
//   log_wp_TC = log pi_c + log N(z_t | mu_c, var_c), log_post_TC posteriors, scores_TN = log P*(i)
#pragma once

#include <torch/torch.h>

#include <string>
#include <vector>

namespace idamoe::moe {

// log pi_c + log N(z | mu_c, diag var_c) for every (t, c), via the GEMM expansion
//   sum_l (z_l - mu_l)^2 / var_l = z^2 . (1/var)^T - 2 z . (mu/var)^T + sum_l mu_l^2/var_l
// (two [T,L]x[L,C] GEMMs, never a [T,C,L] tensor). z and mu are first shifted by the (detached) mean of
// the means, which leaves the value unchanged and keeps the cancellation in the expansion small.
// The quadratic form is clamped at 0 (it is a sum of squares; rounding can make it slightly negative).
torch::Tensor gmm_log_weighted_prob(const torch::Tensor & z_TL, const torch::Tensor & log_pi_C,
                                    const torch::Tensor & means_CL, const torch::Tensor & var_CL);

// log P*(i) = max over expert i's components of log P(c | z)  (eq. 17, in log space).
// expert_of_C undefined: component c belongs to expert c / M (the layout the router uses).
torch::Tensor expert_log_scores(const torch::Tensor & log_post_TC, int64_t num_experts,
                                const torch::Tensor & expert_of_C = {});

struct TopK {
    torch::Tensor idx_TK;         // int64 chosen expert per rank
    torch::Tensor log_scores_TK;  // log P*_j of the chosen expert
    torch::Tensor gates_TK;       // softmax over the K chosen P*_j (eq. 19)
};

// Rank j takes argmax_i of scores_per_rank[j] (eq. 18), among experts not taken by ranks < j when
// `distinct` (ties -> lowest index). scores are log P* ([T,N] each); gates = softmax(exp(log P*)) (eq. 19).
TopK select_topk_experts(const std::vector<torch::Tensor> & log_scores_per_rank_TN, bool distinct);

// One GMM set j of eq. 14 in the latent space: N*M diagonal Gaussians.
// Parameterisation: pi = softmax(mix_logits) (init 0 = uniform), var = softplus(var_raw) + floor
// (init var = 1 + floor), means ~ N(0, 1/L) (the randn/sqrt(d) init of the authors' code youzark/IDA_MoE
// sharpen_gating.py). Parameters are stored in fp32 or fp64, never lower; inputs are promoted.
class GmmSetImpl : public torch::nn::Module {
public:
    // `gen`: the router's own CPU generator, so the init is reproducible and leaves the global RNG alone.
    GmmSetImpl(int64_t num_components, int64_t latent_dim, double variance_floor, at::Generator gen);
    torch::Tensor log_pi() const;                              // [C]
    torch::Tensor variances() const;                           // [C, L]
    torch::Tensor log_weighted_prob(const torch::Tensor & z_TL) const;  // [T, C], dtype of the parameters

    torch::Tensor mix_logits, means, var_raw;
    double variance_floor;
};
TORCH_MODULE(GmmSet);

// Evaluates one GMM set (weights [C], means [C,d], variances [C,d], expert_of_component [C] int64, read
// from the safetensors file params_path) on points [n,d] (tensor "points" of points_path) in fp64 through
// the same functions as training, and writes log_likelihood [n], posteriors [n,C], log_posteriors [n,C],
// topk_experts [n,K] int64 and topk_gates [n,K] to out_path. The same set is used for all K ranks.
void gmm_inspect(const std::string & params_path, const std::string & points_path, const std::string & out_path,
                 int64_t top_k = 2);

}  // namespace idamoe::moe
