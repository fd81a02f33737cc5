// defines: micro_batch_objective, weighted_micro_batch_objective, aux_weight
//
// Loss normalisation (a deliberate deviation from HF/MoE-LLaVA, which average per-micro-batch token means
// and divide by grad_accum — moe_llava_protocol.md §2.4): the CE of an optimizer step is the sum of
// per-token CE over ALL micro-batches and ranks divided by the total number of target tokens of the step,
// so every supervised token weighs the same however the batch is split.
//
// Router/aux losses follow the same rule over real (unpadded) tokens: each micro-batch's aux loss is a
// mean over its R_m real rows (IDA-MoE's L_AE, L_GMM, L_react; the baselines' z-loss), so it is weighted
// by R_m / R_step, R_step = Σ rows over all micro-batches and ranks. Without that, 2 ranks holding 90 and
// 30 real tokens would average their two means, giving the 30 tokens 1.5x the weight they have in one
// process on the joined batch. (Aux losses that are not per-token means, e.g. GShard's load balance
// N·Σ f_i P_i, stay per-micro-batch quantities; the row weighting is then the natural generalisation.)
// A task that cannot count its rows gets the old rule: per-micro-batch means averaged over grad_accum.
//
// Each micro-batch backpropagates
//     ce_sum * world_size / total_target_tokens  +  aux * aux_weight
// where world_size undoes the gradient reducer's average over ranks (dist::GradReducer averages).
// Summed over micro-batches (and averaged over ranks) this is exactly  Σ CE / Σ tokens + Σ aux·R / Σ R.
#pragma once

#include <torch/torch.h>

#include <cstdint>

namespace idamoe::train {

// Weight of one micro-batch's aux loss in its backward: world * rows / total_rows (rows known), else 1/grad_accum.
inline double aux_weight(int64_t rows, double total_rows, int64_t grad_accum, int64_t world_size) {
    if (rows < 0) return 1.0 / static_cast<double>(grad_accum);
    return total_rows > 0 ? static_cast<double>(world_size) * static_cast<double>(rows) / total_rows : 0.0;
}

inline torch::Tensor weighted_micro_batch_objective(const torch::Tensor & ce_sum, int64_t total_target_tokens,
                                                    const torch::Tensor & aux, double aux_w, int64_t world_size) {
    const double denom = static_cast<double>(total_target_tokens > 0 ? total_target_tokens : 1);
    torch::Tensor obj = ce_sum * (static_cast<double>(world_size) / denom);
    if (aux.defined()) obj = obj + aux * aux_w;
    return obj;
}

// The grad_accum form (rows unknown): aux averaged over the micro-batches.
inline torch::Tensor micro_batch_objective(const torch::Tensor & ce_sum, int64_t total_target_tokens,
                                           const torch::Tensor & aux, int64_t grad_accum, int64_t world_size = 1) {
    return weighted_micro_batch_objective(ce_sum, total_target_tokens, aux, aux_weight(-1, 0, grad_accum, world_size), world_size);
}

}  // namespace idamoe::train
