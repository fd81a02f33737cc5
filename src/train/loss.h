// defines: micro_batch_objective
//
// Loss normalisation (a deliberate deviation from HF/MoE-LLaVA, which average per-micro-batch token means
// and divide by grad_accum — moe_llava_protocol.md §2.4): the CE of an optimizer step is the sum of
// per-token CE over ALL micro-batches and ranks divided by the total number of target tokens of the step,
// so every supervised token weighs the same however the batch is split. Router/aux losses are already
// per-micro-batch means and are averaged over the grad_accum micro-batches.
//
// Each micro-batch backpropagates
//     ce_sum * world_size / total_target_tokens  +  aux / grad_accum
// where world_size undoes the gradient reducer's average over ranks (dist::GradReducer averages).
// Summed over micro-batches (and averaged over ranks) this is exactly  Σ CE / Σ tokens + mean(aux).
#pragma once

#include <torch/torch.h>

#include <cstdint>

namespace idamoe::train {

inline torch::Tensor micro_batch_objective(const torch::Tensor & ce_sum, int64_t total_target_tokens,
                                           const torch::Tensor & aux, int64_t grad_accum, int64_t world_size = 1) {
    const double denom = static_cast<double>(total_target_tokens > 0 ? total_target_tokens : 1);
    torch::Tensor obj = ce_sum * (static_cast<double>(world_size) / denom);
    if (aux.defined()) obj = obj + aux / static_cast<double>(grad_accum);
    return obj;
}

}  // namespace idamoe::train
