// Causal GQA attention with rotary (see attention.h).

#include "model/attention.h"

#include "model/rope.h"

#include <torch/version.h>

#include <cmath>
#include <limits>

namespace idamoe::model {

AttentionImpl::AttentionImpl(const DecoderConfig & c)
    : n_head_(c.num_heads), n_kv_(c.num_kv_heads), head_dim_(c.head_dim) {
    const int64_t D = c.hidden_size, kv = c.num_kv_heads * c.head_dim;
    using torch::nn::LinearOptions;
    q_proj = register_module("q_proj", torch::nn::Linear(LinearOptions(D, D).bias(c.qkv_bias)));
    k_proj = register_module("k_proj", torch::nn::Linear(LinearOptions(D, kv).bias(c.qkv_bias)));
    v_proj = register_module("v_proj", torch::nn::Linear(LinearOptions(D, kv).bias(c.qkv_bias)));
    o_proj = register_module("o_proj", torch::nn::Linear(LinearOptions(D, D).bias(false)));
}

namespace {

double lowest_value(torch::ScalarType t) {
    switch (t) {
        case torch::kBFloat16: return static_cast<double>(std::numeric_limits<c10::BFloat16>::lowest());
        case torch::kFloat16: return static_cast<double>(std::numeric_limits<c10::Half>::lowest());
        case torch::kFloat64: return std::numeric_limits<double>::lowest();
        default: return static_cast<double>(std::numeric_limits<float>::lowest());
    }
}

}  // namespace

torch::Tensor repeat_kv(const torch::Tensor & x_BGSd, int64_t n_rep) {
    if (n_rep == 1) return x_BGSd;
    const auto s = x_BGSd.sizes();
    return x_BGSd.unsqueeze(2).expand({s[0], s[1], n_rep, s[2], s[3]}).reshape({s[0], s[1] * n_rep, s[2], s[3]});
}

torch::Tensor AttentionImpl::forward(const torch::Tensor & x_BTD, const torch::Tensor & cos_BTr,
                                     const torch::Tensor & sin_BTr, const torch::Tensor & allowed_B1TS, LayerKV * cache) {
    const int64_t B = x_BTD.size(0), T = x_BTD.size(1);
    // Head split: [B, T, H*d] → [B, H, T, d].
    auto q_BHTd = q_proj(x_BTD).view({B, T, n_head_, head_dim_}).transpose(1, 2);
    auto k_BGTd = k_proj(x_BTD).view({B, T, n_kv_, head_dim_}).transpose(1, 2);
    auto v_BGTd = v_proj(x_BTD).view({B, T, n_kv_, head_dim_}).transpose(1, 2);
    q_BHTd = apply_rope(q_BHTd, cos_BTr, sin_BTr);
    k_BGTd = apply_rope(k_BGTd, cos_BTr, sin_BTr);

    torch::Tensor k_BGSd = k_BGTd, v_BGSd = v_BGTd;
    if (cache) {  // the cache stores rotated keys; new entries go after the old ones
        if (cache->k_BGSd.defined()) {
            k_BGSd = torch::cat({cache->k_BGSd, k_BGTd}, 2);
            v_BGSd = torch::cat({cache->v_BGSd, v_BGTd}, 2);
        }
        cache->k_BGSd = k_BGSd;
        cache->v_BGSd = v_BGSd;
    }
    const auto k_BHSd = repeat_kv(k_BGSd, n_head_ / n_kv_);
    const auto v_BHSd = repeat_kv(v_BGSd, n_head_ / n_kv_);

    // Masked keys get the dtype's lowest value (HF: finfo(dtype).min), never -inf, so a query row
    // with every key masked stays finite.
    const double lowest = lowest_value(q_BHTd.scalar_type());
    torch::Tensor y_BHTd;
#if TORCH_VERSION_MAJOR >= 2
    const auto additive_B1TS = torch::zeros(allowed_B1TS.sizes(), q_BHTd.options()).masked_fill(allowed_B1TS.logical_not(), lowest);
    y_BHTd = torch::scaled_dot_product_attention(q_BHTd, k_BHSd, v_BHSd, additive_B1TS);
#else
    // Eager HF path: scores / sqrt(d), masked, softmax in fp32, back to the activation dtype.
    auto scores_BHTS = torch::matmul(q_BHTd, k_BHSd.transpose(2, 3)) / std::sqrt(static_cast<double>(head_dim_));
    scores_BHTS = scores_BHTS.masked_fill(allowed_B1TS.logical_not(), lowest);
    const auto probs_BHTS = torch::softmax(scores_BHTS, -1, torch::kFloat32).to(q_BHTd.scalar_type());
    y_BHTd = torch::matmul(probs_BHTS, v_BHSd);
#endif
    return o_proj(y_BHTd.transpose(1, 2).reshape({B, T, n_head_ * head_dim_}));
}

}  // namespace idamoe::model
