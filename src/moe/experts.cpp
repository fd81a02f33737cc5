// Experts and sort-based dispatch/combine; see experts.h for the shape legend.
#include "moe/experts.h"

#include <cmath>
#include <limits>

namespace idamoe::moe {

SwiGluFfnImpl::SwiGluFfnImpl(int64_t d_model, int64_t d_ff) {
    using torch::nn::LinearOptions;
    gate_proj = register_module("gate_proj", torch::nn::Linear(LinearOptions(d_model, d_ff).bias(false)));
    up_proj = register_module("up_proj", torch::nn::Linear(LinearOptions(d_model, d_ff).bias(false)));
    down_proj = register_module("down_proj", torch::nn::Linear(LinearOptions(d_ff, d_model).bias(false)));
}

torch::Tensor SwiGluFfnImpl::apply(const torch::Tensor & x_TD) const {
    namespace F = torch::nn::functional;
    return F::linear(torch::silu(F::linear(x_TD, gate_proj->weight)) * F::linear(x_TD, up_proj->weight),
                     down_proj->weight);
}

torch::Tensor SwiGluFfnImpl::forward(const torch::Tensor & x_BTD, const torch::Tensor & /*mask_BT*/) {
    TORCH_CHECK(x_BTD.size(-1) == gate_proj->weight.size(1), "swiglu ffn: expected x [..., ",
                gate_proj->weight.size(1), "], got ", x_BTD.sizes());
    return apply(x_BTD);
}

std::pair<torch::Tensor, torch::Tensor> apply_capacity(const torch::Tensor & idx_TK, const torch::Tensor & gates_TK,
                                                       int64_t N, double capacity_factor) {
    const int64_t T = idx_TK.size(0), K = idx_TK.size(1);
    const torch::Tensor real_T = idx_TK.select(1, 0) < N;
    // capacity = ceil(S / N * cf * K), S = real tokens (DeepSpeed _capacity with cf*2 for top-2)
    const torch::Tensor cap = torch::ceil(real_T.sum().to(torch::kDouble) * (capacity_factor * K / N));
    // position of each assignment in its expert's queue, rank-major: r = j*T + t
    const torch::Tensor e_A = idx_TK.t().reshape({-1});
    const torch::Tensor onehot_AE = torch::one_hot(e_A, N + 1);
    const torch::Tensor pos_A = (onehot_AE.cumsum(0) - 1).gather(1, e_A.unsqueeze(1)).squeeze(1);
    const torch::Tensor keep_TK = ((pos_A.to(torch::kDouble) < cap) & (e_A < N)).view({K, T}).t();
    const torch::Tensor idx_kept = idx_TK.masked_fill(~keep_TK, N);
    const torch::Tensor g_kept = gates_TK * keep_TK.to(gates_TK.scalar_type());
    const torch::Tensor scale_T1 = gates_TK.sum(1, true) /
                                   g_kept.sum(1, true).clamp_min(std::numeric_limits<float>::epsilon());
    return {idx_kept, g_kept * scale_T1};
}

torch::Tensor count_assignments(const torch::Tensor & idx_TK, int64_t N) {
    const torch::Tensor e_A = idx_TK.reshape({-1});
    return torch::zeros({N + 1}, e_A.options()).scatter_add(0, e_A, torch::ones_like(e_A));
}

torch::Tensor dispatch_combine(const torch::Tensor & x_TD, const torch::Tensor & idx_TK, const torch::Tensor & gates_TK,
                               const torch::Tensor & counts_host, const std::vector<SwiGluFfnImpl *> & experts) {
    const int64_t N = static_cast<int64_t>(experts.size()), K = idx_TK.size(1);
    TORCH_CHECK(counts_host.device().is_cpu() && counts_host.numel() == N + 1, "moe dispatch: expected host counts [",
                N + 1, "], got ", counts_host.sizes());
    const auto * c = counts_host.to(torch::kLong).contiguous().data_ptr<int64_t>();
    int64_t S = 0;
    for (int64_t e = 0; e < N; ++e) S += c[e];

    // dispatch: sort assignments by expert id (stable: token order within an expert), gather routed rows
    const torch::Tensor e_A = idx_TK.reshape({-1});
    const torch::Tensor order_S = std::get<1>(torch::sort(e_A, /*stable=*/true, 0, false)).narrow(0, 0, S);
    const torch::Tensor tok_S = order_S.div(K, "floor");
    const torch::Tensor x_SD = x_TD.index_select(0, tok_S);

    // experts: each runs once on its contiguous slice
    std::vector<torch::Tensor> y;
    int64_t off = 0;
    for (int64_t e = 0; e < N; ++e) {
        if (c[e] > 0) y.push_back(experts[e]->apply(x_SD.narrow(0, off, c[e])));
        off += c[e];
    }
    torch::Tensor y_TD = torch::zeros_like(x_TD);
    if (S == 0) return y_TD;
    // combine: weight by the gate, scatter-add back to the token rows
    const torch::Tensor g_S1 = gates_TK.reshape({-1}).index_select(0, order_S).unsqueeze(1).to(x_TD.scalar_type());
    return y_TD.index_add(0, tok_S, torch::cat(y, 0) * g_S1);
}

}  // namespace idamoe::moe
