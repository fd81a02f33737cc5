// RMSNorm and LayerNorm with the exact HF numerics (docs/architectures.md §0).

#include "model/norms.h"

namespace idamoe::model {

NormImpl::NormImpl(NormKind kind, int64_t dim, double eps) : kind_(kind), eps_(eps) {
    weight = register_parameter("weight", torch::ones({dim}));
    if (kind_ == NormKind::LayerNorm) bias = register_parameter("bias", torch::zeros({dim}));
}

torch::Tensor NormImpl::forward(const torch::Tensor & x_BTD) {
    if (kind_ == NormKind::LayerNorm)  // population variance, eps inside the sqrt (nn.LayerNorm)
        return torch::layer_norm(x_BTD, {x_BTD.size(-1)}, weight, bias, eps_);
    // Qwen2RMSNorm: statistics in fp32, cast back to the input dtype, *then* scale by the weight.
    const auto x = x_BTD.to(torch::kFloat32);
    const auto normed = x * torch::rsqrt(x.pow(2).mean(-1, /*keepdim=*/true) + eps_);
    return weight * normed.to(x_BTD.scalar_type());
}

}  // namespace idamoe::model
