// defines: SwiGluMlpImpl (TORCH_MODULE SwiGluMlp) — the dense FFN of Qwen2 and StableLM
//
// down( silu(gate(x)) * up(x) ), no biases; submodules named gate_proj / up_proj / down_proj like
// the HF checkpoint. It is the default occupant of a decoder layer's FFN slot (model/ffn.h).
#pragma once

#include "model/ffn.h"

#include <torch/torch.h>

namespace idamoe::model {

class SwiGluMlpImpl : public FfnImpl {
public:
    SwiGluMlpImpl(int64_t hidden, int64_t intermediate);
    torch::Tensor forward(const torch::Tensor & x_BTD, const torch::Tensor & mask_BT) override;

    torch::nn::Linear gate_proj{nullptr}, up_proj{nullptr}, down_proj{nullptr};
};
TORCH_MODULE(SwiGluMlp);

}  // namespace idamoe::model
