// defines: VitActivation, vit_activation_from_name, vit_activate, VitAttentionImpl, VitMlpImpl,
//          VitLayerImpl, VitEncoderImpl (and their TORCH_MODULE holders)
//
// The pre-LN transformer encoder block shared by CLIP and SigLIP (HF CLIPEncoderLayer /
// SiglipEncoderLayer): identical structure, they differ only in activation and LayerNorm eps.
// Submodule names equal the HF keys below vision_model.encoder.layers.{i}.
//
// Shape legend: B batch, N tokens, D width, F MLP width, H heads, Dh head width.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <string>
#include <vector>

namespace idamoe::model {

enum class VitActivation { kQuickGelu, kGeluTanh, kGeluErf };

// HF hidden_act names: quick_gelu (CLIP), gelu_pytorch_tanh / gelu_new (SigLIP), gelu (erf).
// Throws std::invalid_argument for any other name.
VitActivation vit_activation_from_name(const std::string & name);
torch::Tensor vit_activate(const torch::Tensor & x, VitActivation act);

class VitAttentionImpl : public torch::nn::Module {
public:
    VitAttentionImpl(int64_t d_model, int64_t n_head);
    torch::Tensor forward(const torch::Tensor & x_BND);  // bidirectional, no mask

    torch::nn::Linear q_proj{nullptr}, k_proj{nullptr}, v_proj{nullptr}, out_proj{nullptr};

private:
    int64_t n_head_, head_dim_;
};
TORCH_MODULE(VitAttention);

class VitMlpImpl : public torch::nn::Module {
public:
    VitMlpImpl(int64_t d_model, int64_t d_ff, VitActivation act);
    torch::Tensor forward(const torch::Tensor & x_BND);

    torch::nn::Linear fc1{nullptr}, fc2{nullptr};

private:
    VitActivation act_;
};
TORCH_MODULE(VitMlp);

class VitLayerImpl : public torch::nn::Module {
public:
    VitLayerImpl(int64_t d_model, int64_t d_ff, int64_t n_head, double norm_eps, VitActivation act);
    torch::Tensor forward(const torch::Tensor & x_BND);

    torch::nn::LayerNorm layer_norm1{nullptr};
    VitAttention self_attn{nullptr};
    torch::nn::LayerNorm layer_norm2{nullptr};
    VitMlp mlp{nullptr};
};
TORCH_MODULE(VitLayer);

class VitEncoderImpl : public torch::nn::Module {
public:
    VitEncoderImpl(int64_t n_layer, int64_t d_model, int64_t d_ff, int64_t n_head, double norm_eps,
                   VitActivation act);
    // Runs layers 0..n_run-1 and returns [x, out_0, ..., out_{n_run-1}] (HF hidden_states order).
    std::vector<torch::Tensor> forward(const torch::Tensor & x_BND, int64_t n_run);
    int64_t n_layer() const { return static_cast<int64_t>(layers->size()); }

    torch::nn::ModuleList layers{nullptr};
};
TORCH_MODULE(VitEncoder);

}  // namespace idamoe::model
