// defines: rope_cos_sin, apply_rope
//
// Rotary position embedding, HF "default" type with the rotate_half (NeoX, half-split) convention
// and partial rotary (docs/architectures.md §0.1). Only the first `rot` channels of each head are
// rotated (StableLM: 25%); the rest pass through. Legend: B batch, H heads, T time, d head_dim,
// r rotary width.
#pragma once

#include <torch/torch.h>

#include <utility>

namespace idamoe::model {

// cos/sin tables [B, T, r] for integer positions pos_BT, computed in fp32 like HF
// (inv_freq = 1 / theta^(arange(0, r, 2) / r), emb = cat(freqs, freqs)), then cast to `dtype`.
std::pair<torch::Tensor, torch::Tensor> rope_cos_sin(const torch::Tensor & pos_BT, int64_t rot, double theta,
                                                     torch::ScalarType dtype);

// x_BHTd' = concat(x_rot*cos + rotate_half(x_rot)*sin, x_pass) with cos/sin broadcast over heads.
torch::Tensor apply_rope(const torch::Tensor & x_BHTd, const torch::Tensor & cos_BTr, const torch::Tensor & sin_BTr);

}  // namespace idamoe::model
