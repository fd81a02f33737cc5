// defines: SwiGluFfnImpl (one expert = the decoder's dense FFN shape), apply_capacity, Dispatch, dispatch_combine
//
// Sort-based dropless dispatch (MegaBlocks-style, performance_anchors §5): assignments (t, j) are sorted by
// expert id, the routed rows gathered once, each expert runs once on its contiguous slice, and the
// gate-weighted outputs are index_add-ed back. The only host sync is the copy of the per-expert counts
// that sizes the slices.
//
// Shape legend: T rows, D model dim, F ffn dim, N experts, K ranks, A = T*K assignments,
//               S = assignments that reach an expert (sorted order).
// Expert id N in idx_TK is the "skip" sentinel: padding rows and capacity drops go there and are not run.
#pragma once

#include <torch/torch.h>

#include <vector>

#include "model/ffn.h"

namespace idamoe::moe {

// SwiGLU FFN without bias: down_proj(silu(gate_proj(x)) * up_proj(x)) — the LLaMA/Qwen2/StableLM MLP.
// Usable as a dense FFN slot (mask ignored: the map is per token) and as one expert.
class SwiGluFfnImpl : public model::FfnImpl {
public:
    SwiGluFfnImpl(int64_t d_model, int64_t d_ff);
    torch::Tensor forward(const torch::Tensor & x_BTD, const torch::Tensor & mask_BT) override;
    torch::Tensor apply(const torch::Tensor & x_TD) const;  // any leading shape
    torch::nn::Linear gate_proj{nullptr}, up_proj{nullptr}, down_proj{nullptr};
};
TORCH_MODULE(SwiGluFfn);

// DeepSpeed-style capacity (protocol §3.4): capacity = ceil(S_real / N * cf * K) per expert; assignments
// queue in rank-major order (all rank-1 choices in token order, then rank 2, ...), overflow is dropped
// (expert id := N) and each token's surviving gates are rescaled to keep the token's gate mass
// (for renormalised gates this is DeepSpeed's g_j / sum_kept g). Returns {idx_TK, gates_TK}.
std::pair<torch::Tensor, torch::Tensor> apply_capacity(const torch::Tensor & idx_TK, const torch::Tensor & gates_TK,
                                                       int64_t num_experts, double capacity_factor);

// Assignments per expert id (0..N, N = skipped), int64 [N+1], on the device of idx_TK. No host sync.
torch::Tensor count_assignments(const torch::Tensor & idx_TK, int64_t num_experts);

// y_TD = sum_j gates_tj * Expert_{idx_tj}(x_t) over assignments with idx < N. counts_host: int64 CPU [N+1]
// from count_assignments (the caller copies it to the host, together with anything else it needs).
torch::Tensor dispatch_combine(const torch::Tensor & x_TD, const torch::Tensor & idx_TK, const torch::Tensor & gates_TK,
                               const torch::Tensor & counts_host, const std::vector<SwiGluFfnImpl *> & experts);

}  // namespace idamoe::moe
