// Encoder blocks for CLIP / SigLIP vision towers; see vit_blocks.h.
// Shape legend: B batch, N tokens, D width, F MLP width, H heads, Dh head width.
#include "model/vit_blocks.h"

#include <torch/version.h>

#include <cmath>
#include <stdexcept>

namespace idamoe::model {

namespace nn = torch::nn;

VitActivation vit_activation_from_name(const std::string & name) {
    if (name == "quick_gelu") return VitActivation::kQuickGelu;
    if (name == "gelu_pytorch_tanh" || name == "gelu_new") return VitActivation::kGeluTanh;
    if (name == "gelu") return VitActivation::kGeluErf;
    throw std::invalid_argument("vision tower: unsupported hidden_act '" + name +
                                "' (supported: quick_gelu, gelu_pytorch_tanh, gelu_new, gelu)");
}

torch::Tensor vit_activate(const torch::Tensor & x, VitActivation act) {
    switch (act) {
        // HF activations.py QuickGELUActivation: x * sigmoid(1.702 x)
        case VitActivation::kQuickGelu: return x * torch::sigmoid(1.702 * x);
        // HF PytorchGELUTanh: gelu(x, approximate="tanh")
        case VitActivation::kGeluTanh: return torch::gelu(x, "tanh");
        case VitActivation::kGeluErf: return torch::gelu(x);
    }
    return x;
}

// ---------------------------------------------------------------------------------------------
VitAttentionImpl::VitAttentionImpl(int64_t d_model, int64_t n_head) : n_head_(n_head), head_dim_(d_model / n_head) {
    TORCH_CHECK(n_head > 0 && d_model % n_head == 0, "vision attention: hidden_size ", d_model,
                " is not divisible by num_attention_heads ", n_head);
    q_proj = register_module("q_proj", nn::Linear(nn::LinearOptions(d_model, d_model).bias(true)));
    k_proj = register_module("k_proj", nn::Linear(nn::LinearOptions(d_model, d_model).bias(true)));
    v_proj = register_module("v_proj", nn::Linear(nn::LinearOptions(d_model, d_model).bias(true)));
    out_proj = register_module("out_proj", nn::Linear(nn::LinearOptions(d_model, d_model).bias(true)));
}

torch::Tensor VitAttentionImpl::forward(const torch::Tensor & x_BND) {
    const int64_t B = x_BND.size(0), N = x_BND.size(1), D = x_BND.size(2);
    auto split = [&](const torch::Tensor & t_BND) {  // head h owns rows h*Dh .. h*Dh+Dh-1
        return t_BND.view({B, N, n_head_, head_dim_}).transpose(1, 2);  // [B, H, N, Dh]
    };
    torch::Tensor q_BHND = split(q_proj(x_BND));
    torch::Tensor k_BHND = split(k_proj(x_BND));
    torch::Tensor v_BHND = split(v_proj(x_BND));

#if TORCH_VERSION_MAJOR >= 2
    // Default scale is Dh^-0.5, as HF's; no mask: vision encoders are bidirectional.
    torch::Tensor o_BHND = at::scaled_dot_product_attention(q_BHND, k_BHND, v_BHND);
#else
    // HF eager path: softmax in fp32, cast back to the query dtype (architectures.md 0).
    const double scale = 1.0 / std::sqrt(static_cast<double>(head_dim_));
    torch::Tensor scores_BHNN = torch::matmul(q_BHND, k_BHND.transpose(-1, -2)) * scale;
    torch::Tensor probs_BHNN = torch::softmax(scores_BHNN, -1, torch::kFloat32).to(q_BHND.scalar_type());
    torch::Tensor o_BHND = torch::matmul(probs_BHNN, v_BHND);
#endif
    torch::Tensor o_BND = o_BHND.transpose(1, 2).reshape({B, N, D});
    return out_proj(o_BND);
}

// ---------------------------------------------------------------------------------------------
VitMlpImpl::VitMlpImpl(int64_t d_model, int64_t d_ff, VitActivation act) : act_(act) {
    fc1 = register_module("fc1", nn::Linear(d_model, d_ff));
    fc2 = register_module("fc2", nn::Linear(d_ff, d_model));
}

torch::Tensor VitMlpImpl::forward(const torch::Tensor & x_BND) { return fc2(vit_activate(fc1(x_BND), act_)); }

// ---------------------------------------------------------------------------------------------
VitLayerImpl::VitLayerImpl(int64_t d_model, int64_t d_ff, int64_t n_head, double norm_eps, VitActivation act) {
    layer_norm1 = register_module("layer_norm1", nn::LayerNorm(nn::LayerNormOptions({d_model}).eps(norm_eps)));
    self_attn = register_module("self_attn", VitAttention(d_model, n_head));
    layer_norm2 = register_module("layer_norm2", nn::LayerNorm(nn::LayerNormOptions({d_model}).eps(norm_eps)));
    mlp = register_module("mlp", VitMlp(d_model, d_ff, act));
}

torch::Tensor VitLayerImpl::forward(const torch::Tensor & x_BND) {
    torch::Tensor h_BND = x_BND + self_attn(layer_norm1(x_BND));  // residual 1
    return h_BND + mlp(layer_norm2(h_BND));                        // residual 2
}

// ---------------------------------------------------------------------------------------------
VitEncoderImpl::VitEncoderImpl(int64_t n_layer, int64_t d_model, int64_t d_ff, int64_t n_head, double norm_eps,
                               VitActivation act) {
    layers = register_module("layers", nn::ModuleList());
    for (int64_t i = 0; i < n_layer; ++i) layers->push_back(VitLayer(d_model, d_ff, n_head, norm_eps, act));
}

std::vector<torch::Tensor> VitEncoderImpl::forward(const torch::Tensor & x_BND, int64_t n_run) {
    TORCH_CHECK(n_run >= 0 && n_run <= n_layer(), "vision encoder: asked to run ", n_run, " layers of ", n_layer());
    std::vector<torch::Tensor> hidden{x_BND};
    torch::Tensor h_BND = x_BND;
    for (int64_t i = 0; i < n_run; ++i) {
        h_BND = layers->ptr<VitLayerImpl>(i)->forward(h_BND);
        hidden.push_back(h_BND);
    }
    return hidden;
}

}  // namespace idamoe::model
