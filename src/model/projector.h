// defines: ProjectorConfig, ProjectorImpl (TORCH_MODULE Projector)
//
// The multimodal projector from vision features to LLM embeddings (LLaVA / MoE-LLaVA
// multimodal_projector/builder.py):
//   mlp2x_gelu: Sequential(Linear(d_vision, d_model), GELU (erf), Linear(d_model, d_model))
//               -> parameters "0.weight", "0.bias", "2.weight", "2.bias" (Sequential indices; index 1
//               is the parameter-free GELU), i.e. model.mm_projector.{0,2}.* inside LlavaModel.
//   linear:     Linear(d_vision, d_model) -> parameters "weight", "bias" (model.mm_projector.*).
//
// Shape legend: B batch, N tokens, V vision width, D model width.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <string>

namespace idamoe::model {

struct ProjectorConfig {
    std::string type = "mlp2x_gelu";  // mlp2x_gelu | linear
    int64_t d_vision = 1024;          // vision tower hidden_size (LLaVA's mm_hidden_size)
    int64_t d_model = 2048;           // LLM hidden_size
};

class ProjectorImpl : public torch::nn::Module {
public:
    explicit ProjectorImpl(const ProjectorConfig & cfg, uint64_t seed = 0);
    torch::Tensor forward(const torch::Tensor & x_BNV);  // -> [B, N, D] (any leading dims)

    // PyTorch nn.Linear default init (kaiming_uniform a=sqrt(5) => U(+-1/sqrt(fan_in)) for weight
    // and bias), drawn on the CPU from a generator seeded with `seed` so every rank, device and
    // dtype gets the same numbers.
    void reset_parameters(uint64_t seed);
    const ProjectorConfig & config() const { return cfg_; }

    torch::nn::Linear fc0{nullptr};  // registered as "0" (mlp2x_gelu)
    torch::nn::Linear fc2{nullptr};  // registered as "2" (mlp2x_gelu)
    torch::Tensor weight, bias;      // linear

private:
    ProjectorConfig cfg_;
};
TORCH_MODULE(Projector);

}  // namespace idamoe::model
