// defines: FlopModel, peak_flops_for_device
#include "train/flops.h"

#include <algorithm>

#if defined(IDAMOE_WITH_NCCL)
#include <ATen/cuda/CUDAContext.h>
#endif
#include <set>

namespace idamoe::train {

FlopModel::FlopModel(DecoderShape dec, MoeShape moe, VisionShape vis, TrainableParts parts)
    : dec_(dec), moe_(std::move(moe)), vis_(vis), parts_(parts) {}

namespace {
// 2 forward + 2 input gradient (if a trainable module sits upstream) + 2 weight gradient (if trained).
double mult(bool upstream_trains, bool trains) { return 2.0 + (upstream_trains ? 2.0 : 0.0) + (trains ? 2.0 : 0.0); }
}  // namespace

int64_t FlopModel::active_params_per_token() const {
    const int64_t d = dec_.d_model;
    const int64_t attn = d * dec_.n_head * dec_.head_dim * 2 + d * dec_.n_kv_head * dec_.head_dim * 2;
    const int64_t ffn = 3 * d * dec_.d_ff;  // SwiGLU: gate, up, down
    const int64_t e_ff = moe_.expert_d_ff > 0 ? moe_.expert_d_ff : dec_.d_ff;
    const int64_t moe_ffn = (moe_.top_k + moe_.n_shared) * 3 * d * e_ff + moe_.router_params;
    const int64_t n_moe = static_cast<int64_t>(moe_.layers.size());
    return dec_.n_layer * attn + (dec_.n_layer - n_moe) * ffn + n_moe * moe_ffn + d * dec_.vocab;
}

double FlopModel::decoder_flops(const StepShape & s) const {
    double tokens = 0, sum_t2 = 0;
    for (int64_t t : s.seq_lens) {
        tokens += static_cast<double>(t);
        sum_t2 += static_cast<double>(t) * static_cast<double>(t);
    }
    const double d = static_cast<double>(dec_.d_model);
    const double attn_w = d * dec_.n_head * dec_.head_dim * 2 + d * dec_.n_kv_head * dec_.head_dim * 2;
    const double d_attn = static_cast<double>(dec_.n_head * dec_.head_dim);
    const double ffn_w = 3 * d * dec_.d_ff;
    const double e_ff = static_cast<double>(moe_.expert_d_ff > 0 ? moe_.expert_d_ff : dec_.d_ff);
    const double moe_expert_w = (moe_.top_k + moe_.n_shared) * 3 * d * e_ff;
    const std::set<int64_t> moe_layers(moe_.layers.begin(), moe_.layers.end());

    // Walk the residual stream bottom-up, tracking whether anything below has trained parameters.
    bool upstream = parts_.embed || (parts_.projector && s.n_image_tokens > 0) || (parts_.vision && s.n_images > 0);
    double f = 0;
    for (int64_t l = 0; l < dec_.n_layer; ++l) {
        f += mult(upstream, parts_.attention) * attn_w * tokens;
        f += (upstream || parts_.attention ? 3.0 : 1.0) * 4.0 * d_attn * sum_t2;  // QK^T and PV
        upstream = upstream || parts_.attention;
        if (moe_layers.count(l)) {
            f += mult(upstream, parts_.ffn) * moe_expert_w * tokens;
            f += mult(upstream, parts_.router) * static_cast<double>(moe_.router_params) * tokens;
            upstream = upstream || parts_.ffn || parts_.router;
        } else {
            f += mult(upstream, parts_.ffn) * ffn_w * tokens;
            upstream = upstream || parts_.ffn;
        }
    }
    f += mult(upstream, parts_.lm_head) * d * static_cast<double>(dec_.vocab) * tokens;
    return f;
}

double FlopModel::vision_flops(const StepShape & s) const {
    if (!vis_.present || s.n_images == 0) return 0.0;
    const double T = static_cast<double>(vis_.n_patches + (vis_.cls_token ? 1 : 0));
    const double d = static_cast<double>(vis_.d);
    const double n_blocks = static_cast<double>(vis_.n_layer_run) * (4 * d * d + 2 * d * vis_.d_mlp);
    const double fwd = 2 * n_blocks * T + 4.0 * vis_.n_layer_run * T * T * d +
                       2.0 * vis_.channels * vis_.patch * vis_.patch * d * vis_.n_patches;
    const double tower = fwd * (parts_.vision ? 3.0 : 1.0) * static_cast<double>(s.n_images);
    const double proj = mult(parts_.vision, parts_.projector) * static_cast<double>(vis_.proj_params) *
                        static_cast<double>(s.n_image_tokens);
    return tower + proj;
}

double peak_flops_for_device(const std::string & name) {
    // Dense bf16 tensor-core peaks from the vendors' datasheets (llm.c llmc/mfu.h keeps the same table).
    struct Entry { const char * pat; double flops; };
    static const Entry kTable[] = {
        {"H200", 989e12}, {"H100", 989e12}, {"H800", 989e12}, {"A100", 312e12}, {"A800", 312e12},
        {"L40S", 362e12}, {"L40", 181e12},  {"A6000", 155e12}, {"A10G", 70e12},  {"A10", 125e12},
        {"L4", 121e12},   {"4090", 165e12}, {"3090", 71e12},   {"V100", 125e12}, {"T4", 65e12},
    };
    for (const auto & e : kTable)
        if (name.find(e.pat) != std::string::npos) return e.flops;
    return 0.0;
}

std::string device_name(bool cuda, int index) {
#if defined(IDAMOE_WITH_NCCL)
    if (cuda) return at::cuda::getDeviceProperties(index)->name;
#endif
    return cuda ? "cuda" : "cpu";
}

}  // namespace idamoe::train
