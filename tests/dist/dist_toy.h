// defines: ToyNet, toy_batch, toy_uses_expert, toy_params — the tiny model the [dist] tests train
//
// Shared by the worker processes (one per rank) and the single-process reference in the parent, so
// both see bit-identical initialisation and data. float64 so the 1e-6 comparison measures the reducer,
// not float32 summation order.
#pragma once

#include <torch/torch.h>

#include <utility>
#include <vector>

namespace idamoe::test {

struct ToyNetImpl : torch::nn::Module {
    torch::nn::Linear l1{nullptr}, expert{nullptr}, l2{nullptr}, dead{nullptr};
    torch::Tensor scale;  // frozen: broadcast but never reduced

    ToyNetImpl() {
        l1 = register_module("l1", torch::nn::Linear(8, 16));
        expert = register_module("expert", torch::nn::Linear(16, 16));  // skipped by some micro-batches
        l2 = register_module("l2", torch::nn::Linear(16, 4));
        dead = register_module("dead", torch::nn::Linear(4, 4));        // never used by anyone
        scale = register_parameter("scale", torch::full({4}, 1.5), /*requires_grad=*/false);
        to(torch::kDouble);
    }
    torch::Tensor forward(const torch::Tensor & x_B8, bool use_expert) {
        torch::Tensor h = torch::relu(l1(x_B8));
        if (use_expert) h = h + torch::tanh(expert(h));  // residual "expert": absent from the graph when skipped
        return l2(h) * scale;
    }
};
TORCH_MODULE(ToyNet);

constexpr int kToySteps = 10;
constexpr int kToyAccum = 2;   // micro-steps per step; only the last one syncs
constexpr int kToyBatch = 4;   // rows per rank per micro-step

// Micro-batch of `rank` at (step, micro): a pure function of its indices.
inline std::pair<torch::Tensor, torch::Tensor> toy_batch(int step, int micro, int rank) {
    auto gen = at::detail::createCPUGenerator(static_cast<uint64_t>(1000 * step + 10 * micro + rank + 7));
    auto opts = torch::TensorOptions().dtype(torch::kDouble);
    torch::Tensor x = at::randn({kToyBatch, 8}, gen, opts);
    torch::Tensor y = at::randn({kToyBatch, 4}, gen, opts);
    return {x, y};
}

// Rank 0 always routes through the expert; rank 1 only on micro-step 0 (its sync micro-step has none,
// so the reducer must send rank 1's accumulated expert gradient without a hook ever firing).
inline bool toy_uses_expert(int micro, int rank) { return rank == 0 || micro == 0; }

// The parameters in registration order (what a trainer hands to GradReducer).
inline std::vector<torch::Tensor> toy_params(ToyNet & net) {
    std::vector<torch::Tensor> out;
    for (auto & np : net->named_parameters()) out.push_back(np.value());
    return out;
}

}  // namespace idamoe::test
