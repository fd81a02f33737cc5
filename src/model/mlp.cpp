// Dense SwiGLU MLP (see mlp.h).

#include "model/mlp.h"

namespace idamoe::model {

SwiGluMlpImpl::SwiGluMlpImpl(int64_t hidden, int64_t intermediate) {
    gate_proj = register_module("gate_proj", torch::nn::Linear(torch::nn::LinearOptions(hidden, intermediate).bias(false)));
    up_proj = register_module("up_proj", torch::nn::Linear(torch::nn::LinearOptions(hidden, intermediate).bias(false)));
    down_proj = register_module("down_proj", torch::nn::Linear(torch::nn::LinearOptions(intermediate, hidden).bias(false)));
}

// The mask is part of the FFN-slot interface (MoE routing skips padding); a dense MLP ignores it.
torch::Tensor SwiGluMlpImpl::forward(const torch::Tensor & x_BTD, const torch::Tensor & /*mask_BT*/) {
    return down_proj(torch::silu(gate_proj(x_BTD)) * up_proj(x_BTD));
}

}  // namespace idamoe::model
