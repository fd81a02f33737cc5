// Rotary embedding (see rope.h).

#include "model/rope.h"

namespace idamoe::model {

std::pair<torch::Tensor, torch::Tensor> rope_cos_sin(const torch::Tensor & pos_BT, int64_t rot, double theta,
                                                     torch::ScalarType dtype) {
    auto f32 = torch::TensorOptions().dtype(torch::kFloat32).device(pos_BT.device());
    // modeling_rope_utils._compute_default_rope_parameters: int64 arange → float → / dim, base ** that.
    const auto exponent = torch::arange(0, rot, 2, f32.dtype(torch::kInt64)).to(torch::kFloat32) / static_cast<double>(rot);
    const auto inv_freq = 1.0 / torch::pow(theta, exponent);
    const auto freqs_BTh = pos_BT.to(torch::kFloat32).unsqueeze(-1) * inv_freq;  // one product each: exact like HF's matmul
    const auto emb_BTr = torch::cat({freqs_BTh, freqs_BTh}, -1);
    return {emb_BTr.cos().to(dtype), emb_BTr.sin().to(dtype)};
}

torch::Tensor apply_rope(const torch::Tensor & x_BHTd, const torch::Tensor & cos_BTr, const torch::Tensor & sin_BTr) {
    const int64_t r = cos_BTr.size(-1), d = x_BHTd.size(-1);
    // HF: x*cos + rotate_half(x)*sin with rotate_half(x) = cat(-x2, x1). The two halves of sin are equal
    // (emb = cat(freqs, freqs)), so rotate_half(x)*sin = roll(x, r/2) * cat(-sin1, sin1), bit for bit
    // (negation is exact). roll's backward is one roll; the narrows of x1/x2 each cost a zero-filled
    // full-size buffer + copy in backward, and -x2 a pass of its own.
    const auto cos = cos_BTr.unsqueeze(1);  // broadcast over heads
    const auto sin_half = sin_BTr.narrow(-1, 0, r / 2);
    const auto signed_sin = torch::cat({-sin_half, sin_half}, -1).unsqueeze(1);  // [B, 1, T, r]: small
    if (r == d) return x_BHTd * cos + x_BHTd.roll(r / 2, -1) * signed_sin;
    auto parts = x_BHTd.split_with_sizes({r, d - r}, -1);  // partial rotary: split's backward is one cat
    const auto rotated = parts[0] * cos + parts[0].roll(r / 2, -1) * signed_sin;
    return torch::cat({rotated, parts[1]}, -1);
}

}  // namespace idamoe::model
