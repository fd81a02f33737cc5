// Vision -> LLM projector; see projector.h.
// Shape legend: B batch, N tokens, V vision width, D model width.
#include "model/projector.h"

#include <ATen/CPUGeneratorImpl.h>

#include <cmath>

namespace idamoe::model {

namespace nn = torch::nn;

ProjectorImpl::ProjectorImpl(const ProjectorConfig & cfg, uint64_t seed) : cfg_(cfg) {
    TORCH_CHECK(cfg.d_vision > 0 && cfg.d_model > 0, "projector: widths must be positive, got d_vision ", cfg.d_vision,
                ", d_model ", cfg.d_model);
    if (cfg.type == "mlp2x_gelu") {
        fc0 = register_module("0", nn::Linear(cfg.d_vision, cfg.d_model));
        fc2 = register_module("2", nn::Linear(cfg.d_model, cfg.d_model));
    } else if (cfg.type == "linear") {
        weight = register_parameter("weight", torch::empty({cfg.d_model, cfg.d_vision}));
        bias = register_parameter("bias", torch::empty({cfg.d_model}));
    } else {
        TORCH_CHECK(false, "projector: unknown type '", cfg.type, "' (expected mlp2x_gelu or linear)");
    }
    reset_parameters(seed);
}

void ProjectorImpl::reset_parameters(uint64_t seed) {
    torch::NoGradGuard no_grad;
    auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
    auto fill = [&](torch::Tensor & p, int64_t fan_in) {
        const double bound = 1.0 / std::sqrt(static_cast<double>(fan_in));
        torch::Tensor v = torch::empty(p.sizes(), torch::kFloat32).uniform_(-bound, bound, gen);
        p.copy_(v);
    };
    if (cfg_.type == "mlp2x_gelu") {
        fill(fc0->weight, cfg_.d_vision);
        fill(fc0->bias, cfg_.d_vision);
        fill(fc2->weight, cfg_.d_model);
        fill(fc2->bias, cfg_.d_model);
    } else {
        fill(weight, cfg_.d_vision);
        fill(bias, cfg_.d_vision);
    }
}

torch::Tensor ProjectorImpl::forward(const torch::Tensor & x_BNV) {
    TORCH_CHECK(x_BNV.dim() >= 1 && x_BNV.size(-1) == cfg_.d_vision, "projector: expected features with last dim ",
                cfg_.d_vision, " (vision hidden_size), got ", x_BNV.sizes());
    if (cfg_.type == "linear") return torch::linear(x_BNV, weight, bias);
    return fc2(torch::gelu(fc0(x_BNV)));  // erf GELU: nn.GELU() default (moe_llava_protocol.md 1.2)
}

}  // namespace idamoe::model
