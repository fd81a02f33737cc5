// defines: kImageTokenId, LlavaOutput, LlavaModelImpl (TORCH_MODULE LlavaModel), LlavaBuildOptions,
//          build_llava, load_projector
//
// LLaVA-style composition: frozen vision tower -> projector -> features spliced into the decoder's
// input embeddings at the image placeholder positions (moe_llava_protocol.md 2.3).
//
// Parameter names (what named_parameters(), checkpoints and the optimizer see) come out exactly as in
// a LLaVA checkpoint, without a name-mapping table: LlavaModel registers a container "model" whose
// children are the decoder's own inner-model children (embed_tokens, layers, norm: the same module
// objects, shared, not copies) plus "mm_projector", and the decoder's top-level children (lm_head)
// under their own names. So:
//   model.embed_tokens.weight, model.layers.{i}.*, model.norm.*, lm_head.weight   (decoder, unchanged)
//   model.mm_projector.{0,2}.{weight,bias}  (mlp2x_gelu)  |  model.mm_projector.{weight,bias} (linear)
// The vision tower is deliberately NOT registered: it is frozen in every stage (moe_llava_protocol.md
// 1, 2, 3), is always re-loaded from its own HF directory, and keeping its ~0.3-0.4 B parameters out of
// parameters() keeps them out of checkpoints, optimizer groups and gradient all-reduce buckets. It is
// reachable through vision_tower(); LlavaModel's to() moves it along, train() leaves it in eval mode.
//
// Shape legend: B batch, T sequence, D LLM width, V vision width, I images, N image tokens per image,
// C/H/W image channels and pixels.
#pragma once

#include "model/decoder.h"
#include "model/projector.h"
#include "model/vision_tower.h"

#include <torch/torch.h>

#include <cstdint>
#include <string>

namespace idamoe::model {

// LLaVA's IMAGE_TOKEN_INDEX: the data pipeline writes N consecutive copies per <image>.
constexpr int64_t kImageTokenId = -200;
constexpr int64_t kIgnoreIndex = -100;

struct LlavaOutput {
    torch::Tensor logits_BTV;  // [B, T, vocab]
    torch::Tensor loss;        // causal_lm_loss over non-ignored shifted targets; undefined without labels
    torch::Tensor aux_loss;    // the decoder's FFN-slot aux losses (DecoderOutput::aux_loss), may be undefined
};

class LlavaModelImpl : public torch::nn::Module {
public:
    // `vision` and `projector` may be null holders (text-only model). Throws if the projector widths
    // disagree with the tower or the decoder, naming both config files (`llm_config` is the
    // decoder's config.json path, used only in messages).
    LlavaModelImpl(CausalLM llm, VisionTower vision, Projector projector, int64_t select_layer = -2,
                   std::string select_feature = "patch", std::string llm_config = "");

    // input_ids_BT may contain kImageTokenId runs (N per image, images ordered by sample then by
    // occurrence); images_ICHW holds exactly those images (undefined when there are none).
    // attention_mask_BT: 1 real, 0 padding (undefined = all real). labels_BT (may be undefined) is
    // -100 where no loss is wanted; image positions are forced to -100 as LLaVA does.
    LlavaOutput forward(const torch::Tensor & input_ids_BT, const torch::Tensor & attention_mask_BT,
                        const torch::Tensor & images_ICHW, const torch::Tensor & labels_BT = {});

    // Text embeddings with projected image features scattered into the placeholder positions:
    // [B, T, D]. Used by forward() and by generation with an image prefix.
    torch::Tensor prepare_embeds(const torch::Tensor & input_ids_BT, const torch::Tensor & images_ICHW);
    // Frozen tower features -> projector: [I, N, D].
    torch::Tensor image_embeds(const torch::Tensor & images_ICHW);

    // Image placeholders per image (0 for a text-only model).
    int64_t num_image_tokens() const;
    bool has_vision() const { return !vision_.is_empty(); }

    CausalLM & llm() { return llm_; }
    VisionTower & vision_tower() { return vision_; }
    Projector & projector() { return projector_; }

    void to(torch::Device device, torch::Dtype dtype, bool non_blocking = false) override;
    void to(torch::Dtype dtype, bool non_blocking = false) override;
    void to(torch::Device device, bool non_blocking = false) override;
    void train(bool on = true) override;

private:
    CausalLM llm_;
    VisionTower vision_;
    Projector projector_{nullptr};
    int64_t select_layer_;
    std::string select_feature_;
    std::string llm_config_;
};
TORCH_MODULE(LlavaModel);

struct LlavaBuildOptions {
    std::string llm_dir;                     // HF decoder directory (config.json + weights)
    std::string vision_dir;                  // HF CLIP/SigLIP directory; "" = text-only
    std::string projector_type = "mlp2x_gelu";
    int64_t select_layer = -2;               // LLaVA-1.5 mm_vision_select_layer
    std::string select_feature = "patch";    // patch | cls_patch
    torch::Dtype dtype = torch::kFloat32;
    std::string projector_checkpoint;        // "" = random init from projector_seed
    uint64_t projector_seed = 0;
};

// Decoder (io::load_causal_lm) and tower weights are loaded strictly from their directories.
LlavaModel build_llava(const LlavaBuildOptions & options);

// Loads projector weights from a safetensors file or directory. Like LLaVA's
// --pretrain_mm_mlp_adapter, keys are taken from the part after "mm_projector." (so LLaVA's
// model.mm_projector.0.weight and a bare 0.weight both work); MoE-LLaVA's extra
// "image_spatial_proj." level is also accepted. Strict: missing/extra/mis-shaped keys throw.
void load_projector(Projector & projector, const std::string & path);

}  // namespace idamoe::model
