// defines: NormImpl (TORCH_MODULE Norm) — RMSNorm (Qwen2) or LayerNorm with bias (StableLM)
//
// One class for both so a decoder layer registers "input_layernorm" / "post_attention_layernorm"
// / "norm" with the HF parameter names (weight, and bias for LayerNorm) whatever the family.
#pragma once

#include "model/hf_config.h"

#include <torch/torch.h>

namespace idamoe::model {

class NormImpl : public torch::nn::Module {
public:
    NormImpl(NormKind kind, int64_t dim, double eps);
    torch::Tensor forward(const torch::Tensor & x_BTD);

    torch::Tensor weight, bias;  // bias undefined for RMSNorm

private:
    NormKind kind_;
    double eps_;
};
TORCH_MODULE(Norm);

}  // namespace idamoe::model
