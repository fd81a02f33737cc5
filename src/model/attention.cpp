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
    const int64_t B = x_BTD.size(0), T = x_BTD.size(1), G = n_kv_, R = n_head_ / n_kv_, d = head_dim_;
    // One GEMM for q, k and v in training: the k/v projections alone are thin (N = G*d) and BLAS runs them
    // far below its rate. The weights are concatenated per call (a few MB), so the parameters keep their HF
    // names and storage; autograd splits the weight gradient back along the concatenation. Inference (KV
    // cache, one token) keeps three GEMVs: there the concatenation would double the weight reads.
    torch::Tensor q_BTD, k_BTK, v_BTK;
    // Keyed on training mode, not grad mode: a checkpointed layer runs its forward without grad and its
    // recompute with grad, and both must take the same path (GEMMs of other widths round differently).
    if (is_training()) {
        const auto w_3D = torch::cat({q_proj->weight, k_proj->weight, v_proj->weight}, 0);
        const auto b_3 = q_proj->bias.defined() ? torch::cat({q_proj->bias, k_proj->bias, v_proj->bias}, 0) : torch::Tensor();
        // split, not narrow: its backward is one cat, where each narrow's is a zero-filled [B, T, 3D] + copy
        const auto parts = torch::nn::functional::linear(x_BTD, w_3D, b_3).split_with_sizes({n_head_ * d, G * d, G * d}, 2);
        q_BTD = parts[0];
        k_BTK = parts[1];
        v_BTK = parts[2];
    } else {
        q_BTD = q_proj(x_BTD);
        k_BTK = k_proj(x_BTD);
        v_BTK = v_proj(x_BTD);
    }
    // Head split: [B, T, H*d] → [B, H, T, d].
    auto q_BHTd = q_BTD.view({B, T, n_head_, d}).transpose(1, 2);
    auto k_BGTd = k_BTK.view({B, T, G, d}).transpose(1, 2);
    auto v_BGTd = v_BTK.view({B, T, G, d}).transpose(1, 2);
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
    const int64_t S = k_BGSd.size(2);

    // Masked keys get the dtype's lowest value (HF: finfo(dtype).min), never -inf, so a query row
    // with every key masked stays finite.
    const double lowest = lowest_value(q_BHTd.scalar_type());
    torch::Tensor y_BHTd;
#if TORCH_VERSION_MAJOR >= 2
    const auto k_BHSd = repeat_kv(k_BGSd, R);
    const auto v_BHSd = repeat_kv(v_BGSd, R);
    const auto additive_B1TS = torch::zeros(allowed_B1TS.sizes(), q_BHTd.options()).masked_fill(allowed_B1TS.logical_not(), lowest);
    y_BHTd = torch::scaled_dot_product_attention(q_BHTd, k_BHSd, v_BHSd, additive_B1TS);
#else
    // Eager HF path: scores / sqrt(d), masked, softmax in fp32, back to the activation dtype. GQA without
    // repeat_kv: the R query heads sharing a KV head are stacked along the rows ([B, G, R*t, d]), so each
    // batched GEMM is R times taller and no K/V copy is made; the dot products are the same.
    auto attend = [&](const torch::Tensor & q_BGRtd, const torch::Tensor & k_BGsd, const torch::Tensor & v_BGsd,
                      const torch::Tensor & allowed_B1ts) {
        const int64_t t = q_BGRtd.size(3), s = k_BGsd.size(2);
        const auto q_BGNd = q_BGRtd.reshape({B, G, R * t, d});
        auto scores_BGNs = torch::matmul(q_BGNd, k_BGsd.transpose(2, 3));
        scores_BGNs.div_(std::sqrt(static_cast<double>(d)));  // in place: nothing else needs the matmul output
        // the mask repeated for the R stacked heads: a small bool copy, and no in-place op on a view
        const auto masked_B1Ns = allowed_B1ts.logical_not().unsqueeze(2).expand({B, 1, R, t, s}).reshape({B, 1, R * t, s});
        scores_BGNs.masked_fill_(masked_B1Ns, lowest);
        const auto probs_BGNs = torch::softmax(scores_BGNs, -1, torch::kFloat32).to(q_BHTd.scalar_type());
        return torch::matmul(probs_BGNs, v_BGsd).view({B, G, R, t, d});
    };
    const auto q_BGRTd = q_BHTd.view({B, G, R, T, d});
    const int64_t T1 = T / 2;
    // Causal without a cache: queries before T1 only ever see keys before T1, so they skip the other half of
    // the keys (a quarter of the score matrix, of QK^T, softmax and PV). Exact only if the mask really hides
    // those keys and none of those rows is fully masked (left padding: HF spreads such a row uniformly over
    // all S keys); both are checked on the mask, else the full matrix is used.
    const bool split = !cache && S == T && T1 >= 32 &&
                       !allowed_B1TS.narrow(2, 0, T1).narrow(3, T1, T - T1).any().item<bool>() &&
                       allowed_B1TS.narrow(2, 0, T1).narrow(3, 0, T1).any(-1).all().item<bool>();
    if (split) {
        const auto y1_BGRtd = attend(q_BGRTd.narrow(3, 0, T1), k_BGSd.narrow(2, 0, T1), v_BGSd.narrow(2, 0, T1),
                                     allowed_B1TS.narrow(2, 0, T1).narrow(3, 0, T1));
        const auto y2_BGRtd = attend(q_BGRTd.narrow(3, T1, T - T1), k_BGSd, v_BGSd, allowed_B1TS.narrow(2, T1, T - T1));
        y_BHTd = torch::cat({y1_BGRtd, y2_BGRtd}, 3).view({B, n_head_, T, d});
    } else {
        y_BHTd = attend(q_BGRTd, k_BGSd, v_BGSd, allowed_B1TS).view({B, n_head_, T, d});
    }
#endif
    return o_proj(y_BHTd.transpose(1, 2).reshape({B, T, n_head_ * d}));
}

}  // namespace idamoe::model
