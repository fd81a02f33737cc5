// defines: AttentionImpl (TORCH_MODULE Attention), LayerKV
//
// Causal self-attention of Qwen2 / StableLM: biased q/k/v, unbiased o_proj, rotary on the first
// rotary_dim channels of each head, GQA by repeating each KV head for consecutive query heads,
// softmax in fp32 (docs/architectures.md §0). Legend: B batch, T new tokens, S keys (cache + new),
// D hidden, H query heads, G kv heads, d head_dim, r rotary width.
#pragma once

#include "model/hf_config.h"

#include <torch/torch.h>

namespace idamoe::model {

// Keys and values of one layer for all positions seen so far (rotated keys, like HF's cache).
struct LayerKV {
    torch::Tensor k_BGSd, v_BGSd;
};

class AttentionImpl : public torch::nn::Module {
public:
    explicit AttentionImpl(const DecoderConfig & c);

    // allowed_B1TS: bool, true where query t may attend key s (causal and not padding).
    // cache: when given, the new keys/values are appended and attention runs over all of them.
    torch::Tensor forward(const torch::Tensor & x_BTD, const torch::Tensor & cos_BTr, const torch::Tensor & sin_BTr,
                          const torch::Tensor & allowed_B1TS, LayerKV * cache = nullptr);

    torch::nn::Linear q_proj{nullptr}, k_proj{nullptr}, v_proj{nullptr}, o_proj{nullptr};

private:
    int64_t n_head_, n_kv_, head_dim_;
};
TORCH_MODULE(Attention);

// HF repeat_kv: [B, G, S, d] → [B, G*n_rep, S, d], query head h reads kv head h / n_rep.
torch::Tensor repeat_kv(const torch::Tensor & x_BGSd, int64_t n_rep);

}  // namespace idamoe::model
