// defines: DecoderShape, MoeShape, VisionShape, TrainableParts, FlopModel, peak_flops_for_device
//
// Model FLOPs per optimizer step (performance_anchors.md §4). Conventions, fixed here once:
// - matmul weights cost 2N per token forward; +2N for the input gradient when anything upstream of the
//   module trains; +2N for the weight gradient when the module itself trains (Kaplan et al. 2001.08361
//   §2.1: 6N for a fully trained model; 4N for a frozen module that passes gradients; 2N forward-only).
// - attention's two T x T matmuls: 4·d_attn·T per token per layer forward, backward 2x forward when a
//   gradient must flow (PaLM App. B convention, no causal discount, no recompute), with Σ T_i² over the
//   real (unpadded) sequences.
// - MoE layers count active parameters only: top_k experts (+ shared experts) + router (torchtitan).
// - embedding lookups cost nothing; a tied lm_head counts as the head.
// - vision tower per image: 2·N_blocks·T + 4·L·T²·d + 2·C·P²·d·n_patches forward (§4.2), x3 if trained.
// Model FLOPs, not hardware FLOPs: activation recompute is not counted.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace idamoe::train {

struct DecoderShape {
    int64_t n_layer = 0, d_model = 0, d_ff = 0, vocab = 0;
    int64_t n_head = 0, n_kv_head = 0, head_dim = 0;
};

struct MoeShape {
    std::vector<int64_t> layers;        // decoder layers whose FFN is an MoE (empty = dense)
    int64_t top_k = 2;
    int64_t n_shared = 0;               // always-active shared experts (deepseek)
    int64_t router_params = 0;          // matmul parameters of one layer's router applied per token
    int64_t expert_d_ff = 0;            // 0 = decoder d_ff
};

struct VisionShape {
    bool present = false;
    int64_t n_layer_run = 0;            // blocks actually run (select_layer -2 -> L-1)
    int64_t d = 0, d_mlp = 0, patch = 14, channels = 3, n_patches = 0;
    bool cls_token = true;
    int64_t proj_params = 0;            // projector matmul params (mlp2x: in*h + h*h), applied per image token
};

struct TrainableParts {
    bool vision = false, projector = false, embed = false, attention = false, ffn = false, router = false,
         lm_head = false;
};

struct StepShape {
    std::vector<int64_t> seq_lens;      // real (unpadded) length of every sequence in the step, after image expansion
    int64_t n_images = 0;
    int64_t n_image_tokens = 0;         // positions filled by projected image features
};

class FlopModel {
public:
    FlopModel(DecoderShape dec, MoeShape moe, VisionShape vis, TrainableParts parts);

    double decoder_flops(const StepShape & s) const;  // decoder + lm_head, forward + backward
    double vision_flops(const StepShape & s) const;   // tower + projector
    double step_flops(const StepShape & s) const { return decoder_flops(s) + vision_flops(s); }

    // Active matmul parameters per text token (what "N" is in 6N), for reports.
    int64_t active_params_per_token() const;

private:
    DecoderShape dec_;
    MoeShape moe_;
    VisionShape vis_;
    TrainableParts parts_;
};

// Dense bf16 tensor-core peak of one device by name (H100/H200 989e12, A100 312e12, ...); 0 when unknown
// (CPU): callers then report achieved GFLOP/s instead of MFU.
double peak_flops_for_device(const std::string & device_name);
// "NVIDIA H100 80GB HBM3" for a CUDA device (CUDA builds), "cpu" otherwise.
std::string device_name(bool cuda, int index = 0);

}  // namespace idamoe::train
