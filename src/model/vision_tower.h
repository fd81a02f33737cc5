// defines: VisionArch, VisionConfig, vision_config_from_json, vision_config_from_json_text,
//          vision_tower_param_count, VisionTowerImpl (TORCH_MODULE VisionTower), load_vision_tower,
//          build_vision_tower
//
// CLIP ViT and SigLIP ViT vision towers with Hugging Face parameter names (vision_model.*), so a
// CLIPVisionModel / SiglipVisionModel / full CLIPModel / full SiglipModel checkpoint loads
// name-for-name. Architecture spec: docs/architectures.md sections 1 and 2.
//
// Shape legend: B images, C channels, H/W pixels, N tokens (CLIP: CLS + patches, SigLIP: patches),
// D vision width.
#pragma once

#include "model/vit_blocks.h"

#include <torch/torch.h>

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace idamoe::model {

enum class VisionArch { kClip, kSiglip };

// One vision tower's hyper-parameters, as read from a HF config.json (HF field names in comments).
struct VisionConfig {
    VisionArch arch = VisionArch::kClip;
    int64_t d_model = 768;           // hidden_size
    int64_t d_ff = 3072;             // intermediate_size
    int64_t n_layer = 12;            // num_hidden_layers
    int64_t n_head = 12;             // num_attention_heads
    int64_t n_channel = 3;           // num_channels
    int64_t image_size = 224;        // image_size (square)
    int64_t patch_size = 32;         // patch_size
    double norm_eps = 1e-5;          // layer_norm_eps
    std::string act = "quick_gelu";  // hidden_act
    // Preprocessing constants for the data pipeline (CLIPImageProcessor / SiglipImageProcessor);
    // overridden by preprocessor_config.json when the directory has one.
    std::vector<double> image_mean{0.48145466, 0.4578275, 0.40821073};
    std::vector<double> image_std{0.26862954, 0.26130258, 0.27577711};
    std::string source;              // the config.json this came from (for error messages)

    // Conv2d with "valid" padding floors: SigLIP-384/14 uses 27*14 = 378 of 384 pixels.
    int64_t grid() const { return image_size / patch_size; }
    int64_t n_patch() const { return grid() * grid(); }
    bool has_cls() const { return arch == VisionArch::kClip; }
    int64_t n_token() const { return n_patch() + (has_cls() ? 1 : 0); }
    int64_t head_dim() const { return d_model / n_head; }
    const char * arch_name() const { return arch == VisionArch::kClip ? "clip" : "siglip"; }
};

// Reads a HF config.json of model_type clip / clip_vision_model / siglip / siglip_vision_model.
// Full CLIP/SigLIP configs keep the tower in a `vision_config` sub-object; fields missing from the
// file take the HF class defaults (CLIPVisionConfig / SiglipVisionConfig), because published hub
// configs list only non-default fields (architectures.md 2.2). Throws std::runtime_error naming the
// file for other model types or malformed values. If `path` is a directory, reads path/config.json
// and, when present, path/preprocessor_config.json for image_mean / image_std.
VisionConfig vision_config_from_json(const std::string & path);
VisionConfig vision_config_from_json_text(const std::string & json_text, const std::string & source);

// Parameters of the tower as built here (embeddings, pre/post LayerNorms, encoder layers). With
// include_siglip_head the SigLIP attention-pooling head (which we never build) is added, so the
// result matches the hub checkpoint's vision_model.* tensor count.
int64_t vision_tower_param_count(const VisionConfig & cfg, bool include_siglip_head = false);

// ---------------------------------------------------------------------------------------------
// HF module tree: vision_model.{embeddings, pre_layrnorm (CLIP), encoder.layers.i, post_layernorm}.
class VisionEmbeddingsImpl : public torch::nn::Module {
public:
    explicit VisionEmbeddingsImpl(const VisionConfig & cfg);
    torch::Tensor forward(const torch::Tensor & pixels_BCHW);  // -> [B, N, D]

    torch::Tensor class_embedding;  // [D], CLIP only
    torch::nn::Conv2d patch_embedding{nullptr};
    torch::nn::Embedding position_embedding{nullptr};

private:
    VisionConfig cfg_;
};
TORCH_MODULE(VisionEmbeddings);

class VisionTransformerImpl : public torch::nn::Module {
public:
    explicit VisionTransformerImpl(const VisionConfig & cfg);

    VisionEmbeddings embeddings{nullptr};
    torch::nn::LayerNorm pre_layrnorm{nullptr};  // CLIP only; HF's spelling
    VitEncoder encoder{nullptr};
    torch::nn::LayerNorm post_layernorm{nullptr};
};
TORCH_MODULE(VisionTransformer);

class VisionTowerImpl : public torch::nn::Module {
public:
    explicit VisionTowerImpl(const VisionConfig & cfg);

    // HF `output_hidden_states` convention: entry 0 = encoder input (after pre_layrnorm for CLIP),
    // entry k = output of encoder layer k-1, none post-normed. `up_to` is an index into the full
    // (n_layer+1)-entry tuple, negative counting from the end as in Python (-1 = all layers,
    // -2 = all but the last); only layers 0..up_to-1 run, entries 0..up_to are returned.
    std::vector<torch::Tensor> hidden_states(const torch::Tensor & pixels_BCHW, int64_t up_to = -1);
    // All layers; SigLIP applies post_layernorm here, CLIP does not (HF applies CLIP's only to the
    // pooled CLS vector).
    torch::Tensor last_hidden_state(const torch::Tensor & pixels_BCHW);
    // LLaVA feature selection: hidden_states[select_layer] without post-LN, then
    //   "patch":     CLIP drops the CLS token (token 0) -> [B, n_patch, D]. SigLIP has no CLS, so
    //                all tokens are patches and all are kept (LLaVA-NeXT siglip_encoder.py). Note:
    //                MoE-LLaVA's released SigLIP models drop token 0 anyway (728 of 729 patches,
    //                moe_llava_protocol.md 1.1), which discards a real patch; we don't copy that.
    //   "cls_patch": every token.
    torch::Tensor features(const torch::Tensor & pixels_BCHW, int64_t select_layer = -2,
                           const std::string & select_feature = "patch");
    int64_t num_image_tokens(const std::string & select_feature = "patch") const;

    int64_t hidden_size() const { return cfg_.d_model; }
    int64_t image_size() const { return cfg_.image_size; }
    const std::vector<double> & image_mean() const { return cfg_.image_mean; }
    const std::vector<double> & image_std() const { return cfg_.image_std; }
    const VisionConfig & config() const { return cfg_; }

    VisionTransformer vision_model{nullptr};

private:
    int64_t resolve_layer_index(int64_t up_to) const;
    VisionConfig cfg_;
};
TORCH_MODULE(VisionTower);

// Fills `tower` from a HF checkpoint directory (or a single .safetensors file). Only vision_model.*
// keys are taken, minus the SigLIP pooling head (vision_model.head.*) and old position_ids buffers;
// text_model.*, logit_scale, visual_projection, ... of a full CLIP/SigLIP checkpoint are ignored.
// Within vision_model.* loading is strict: a missing or extra tensor, or a shape mismatch, throws.
void load_vision_tower(VisionTower & tower, const std::string & path);

// config.json + weights from `dir`, cast to `dtype`, frozen (requires_grad false) and in eval mode.
VisionTower build_vision_tower(const std::string & dir, torch::Dtype dtype = torch::kFloat32);

// Everything the reference fixtures hold for a tower (tests/fixtures README section 1), under the same
// names: hidden_states.{0..L}, hidden_states_minus2, last_hidden_state, and grad.NAME for each
// parameter NAME in `grad_params` = d sum(hidden_states[-2]) / d NAME. Used by idamoe-forward.
std::map<std::string, torch::Tensor> vision_forward_dump(VisionTower & tower, const torch::Tensor & pixels_BCHW,
                                                         const std::vector<std::string> & grad_params = {});

}  // namespace idamoe::model
