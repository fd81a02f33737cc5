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
    const auto cos = cos_BTr.unsqueeze(1), sin = sin_BTr.unsqueeze(1);  // broadcast over heads
    const auto x_rot = r == d ? x_BHTd : x_BHTd.narrow(-1, 0, r);
    const auto x1 = x_rot.narrow(-1, 0, r / 2), x2 = x_rot.narrow(-1, r / 2, r / 2);
    const auto rotated = x_rot * cos + torch::cat({-x2, x1}, -1) * sin;  // rotate_half = cat(-x2, x1)
    if (r == d) return rotated;
    return torch::cat({rotated, x_BHTd.narrow(-1, r, d - r)}, -1);
}

}  // namespace idamoe::model
