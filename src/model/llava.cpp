// LLaVA-style vision-language model; see llava.h and moe_llava_protocol.md 1.1-1.2, 2.3.
// Shape legend: B batch, T sequence, D LLM width, I images, N image tokens per image, C/H/W pixels.
#include "model/llava.h"

#include "io/hf_loader.h"
#include "io/safetensors.h"

#include <filesystem>
#include <stdexcept>

namespace idamoe::model {

namespace fs = std::filesystem;

namespace {

// A parameter-free container registered as "model": holds the decoder's inner-model children
// (shared module objects) next to mm_projector, so names come out as in a LLaVA checkpoint.
struct LlavaInnerImpl : torch::nn::Module {};
TORCH_MODULE(LlavaInner);

// Registers every child, parameter and buffer of `src` on `dst` under the same names (aliases).
void alias_members(torch::nn::Module & dst, torch::nn::Module & src) {
    for (auto & item : src.named_children()) dst.register_module(item.key(), item.value());
    for (auto & item : src.named_parameters(/*recurse=*/false))
        dst.register_parameter(item.key(), item.value(), item.value().requires_grad());
    for (auto & item : src.named_buffers(/*recurse=*/false)) dst.register_buffer(item.key(), item.value());
}

}  // namespace

LlavaModelImpl::LlavaModelImpl(CausalLM llm, VisionTower vision, Projector projector, int64_t select_layer,
                               std::string select_feature, std::string llm_config)
    : llm_(std::move(llm)), vision_(std::move(vision)), select_layer_(select_layer),
      select_feature_(std::move(select_feature)),
      llm_config_(llm_config.empty() ? std::string("<decoder config.json>") : std::move(llm_config)) {
    TORCH_CHECK(!llm_.is_empty(), "LlavaModel: a decoder is required");
    TORCH_CHECK(vision_.is_empty() == projector.is_empty(), "LlavaModel: a vision tower and a projector go together ",
                "(got tower: ", !vision_.is_empty(), ", projector: ", !projector.is_empty(), ")");
    auto inner = LlavaInner();
    // Decoder children first, so the parameter order equals the decoder's own (optimizer groups and
    // checkpoints do not depend on whether the model is multimodal).
    for (auto & item : llm_->named_children()) {
        if (item.key() == "model") {
            alias_members(*inner, *item.value());
            register_module("model", inner);
        } else {
            register_module(item.key(), item.value());
        }
    }
    for (auto & item : llm_->named_parameters(false)) register_parameter(item.key(), item.value(), item.value().requires_grad());
    for (auto & item : llm_->named_buffers(false)) register_buffer(item.key(), item.value());
    TORCH_CHECK(named_children().contains("model"), "LlavaModel: the decoder has no 'model' submodule (", llm_config_, ")");

    if (!vision_.is_empty()) {
        const ProjectorConfig & pc = projector->config();
        const int64_t d_vision = vision_->hidden_size(), d_model = llm_->config().hidden_size;
        TORCH_CHECK(pc.d_vision == d_vision && pc.d_model == d_model, "LlavaModel: projector maps ", pc.d_vision, " -> ",
                    pc.d_model, " but the vision tower is ", d_vision, " wide (", vision_->config().source,
                    ") and the LLM is ", d_model, " wide (", llm_config_, ")");
        projector_ = inner->register_module("mm_projector", projector);
        vision_->eval();
        for (auto & p : vision_->parameters()) p.set_requires_grad(false);
        num_image_tokens();  // validates select_feature now rather than mid-training
        TORCH_CHECK(select_layer_ >= -(vision_->config().n_layer + 1) && select_layer_ <= vision_->config().n_layer,
                    "LlavaModel: select_layer ", select_layer_, " out of range for ", vision_->config().n_layer,
                    " vision layers (", vision_->config().source, ")");
    }
}

int64_t LlavaModelImpl::num_image_tokens() const {
    return vision_.is_empty() ? 0 : vision_->num_image_tokens(select_feature_);
}

torch::Tensor LlavaModelImpl::image_embeds(const torch::Tensor & images_ICHW) {
    TORCH_CHECK(has_vision(), "LlavaModel: images given to a text-only model (no vision tower configured)");
    torch::Tensor feats_INV;
    {
        // Frozen tower, never trained (moe_llava_protocol.md 1: requires_grad_(False) in every stage).
        torch::NoGradGuard no_grad;
        feats_INV = vision_->features(images_ICHW, select_layer_, select_feature_);
    }
    const torch::Tensor w = projector_->parameters().front();
    return projector_(feats_INV.to(w.scalar_type()));  // [I, N, D]
}

torch::Tensor LlavaModelImpl::prepare_embeds(const torch::Tensor & input_ids_BT, const torch::Tensor & images_ICHW) {
    TORCH_CHECK(input_ids_BT.dim() == 2, "LlavaModel: expected input_ids [B, T], got ", input_ids_BT.sizes());
    torch::Tensor is_img_BT = input_ids_BT == kImageTokenId;
    // Placeholders are not vocabulary ids: look up id 0, then overwrite those rows.
    torch::Tensor text_ids_BT = input_ids_BT.masked_fill(is_img_BT, 0);
    torch::Tensor x_BTD = llm_->embed(text_ids_BT);  // [B, T, D]

    const int64_t n_placeholder = is_img_BT.sum().item<int64_t>();
    if (!images_ICHW.defined() || images_ICHW.size(0) == 0) {
        TORCH_CHECK(n_placeholder == 0, "LlavaModel: input_ids hold ", n_placeholder, " image placeholders (id ",
                    kImageTokenId, ") but no images were given");
        // Text-only batch: keep the projector in the graph with zero gradient, as MoE-LLaVA does by
        // splicing features[0:0] (moe_llava_protocol.md 2.3), so every rank reduces the same tensors.
        if (has_vision() && torch::GradMode::is_enabled() && is_training()) {
            torch::Tensor zero = torch::zeros({}, x_BTD.options());
            for (const auto & p : projector_->parameters()) zero = zero + p.sum().to(x_BTD.scalar_type()) * 0;
            x_BTD = x_BTD + zero;
        }
        return x_BTD;
    }
    TORCH_CHECK(has_vision(), "LlavaModel: ", images_ICHW.size(0), " images given to a text-only model (no vision ",
                "tower configured)");
    TORCH_CHECK(images_ICHW.dim() == 4, "LlavaModel: expected images [I, C, H, W], got ", images_ICHW.sizes());
    const int64_t N = num_image_tokens(), I = images_ICHW.size(0);
    TORCH_CHECK(n_placeholder == I * N, "LlavaModel: ", I, " images x ", N, " tokens per image = ", I * N,
                " placeholders expected, but input_ids hold ", n_placeholder);
    // Every run of placeholders must be whole images: a truncation cutting through an image would
    // otherwise shift every later image's features by a few positions without any error.
    {
        torch::Tensor m = is_img_BT.to(torch::kCPU).contiguous();
        const bool * p = m.data_ptr<bool>();
        const int64_t B = m.size(0), T = m.size(1);
        for (int64_t b = 0; b < B; ++b) {
            int64_t run = 0;
            for (int64_t t = 0; t <= T; ++t) {
                if (t < T && p[b * T + t]) { ++run; continue; }
                TORCH_CHECK(run % N == 0, "LlavaModel: sample ", b, " has a run of ", run, " image placeholders ending at ",
                            "position ", t, ", not a multiple of ", N, " tokens per image (truncated image?)");
                run = 0;
            }
        }
    }
    torch::Tensor img_IND = image_embeds(images_ICHW).to(x_BTD.scalar_type());
    // masked_scatter fills the masked rows in row-major (sample, then position) order, which is the
    // order images are given in.
    return x_BTD.masked_scatter(is_img_BT.unsqueeze(-1), img_IND.reshape({-1, x_BTD.size(-1)}));
}

LlavaOutput LlavaModelImpl::forward(const torch::Tensor & input_ids_BT, const torch::Tensor & attention_mask_BT,
                                    const torch::Tensor & images_ICHW, const torch::Tensor & labels_BT) {
    torch::Tensor x_BTD = prepare_embeds(input_ids_BT, images_ICHW);
    LlavaOutput out;
    torch::Tensor labels;
    if (labels_BT.defined()) {
        TORCH_CHECK(labels_BT.sizes() == input_ids_BT.sizes(), "LlavaModel: labels ", labels_BT.sizes(),
                    " must match input_ids ", input_ids_BT.sizes());
        // LLaVA prepare_inputs_labels_for_multimodal: image positions never carry a target.
        labels = labels_BT.masked_fill(input_ids_BT == kImageTokenId, kIgnoreIndex);
    }
    DecoderOutput dec = llm_->forward_embeds(x_BTD, attention_mask_BT);
    out.logits_BTV = dec.logits_BTV;
    out.aux_loss = dec.aux_loss;
    if (labels.defined()) out.loss = causal_lm_loss(out.logits_BTV, labels);
    return out;
}

// ---------------------------------------------------------------------------------------------
// The decoder object and the tower are not registered children: move them explicitly (the
// decoder's shared children are then visited twice, the second time as a no-op).
void LlavaModelImpl::to(torch::Device device, torch::Dtype dtype, bool non_blocking) {
    torch::nn::Module::to(device, dtype, non_blocking);
    llm_->to(device, dtype, non_blocking);
    if (!vision_.is_empty()) vision_->to(device, dtype, non_blocking);
}
void LlavaModelImpl::to(torch::Dtype dtype, bool non_blocking) {
    torch::nn::Module::to(dtype, non_blocking);
    llm_->to(dtype, non_blocking);
    if (!vision_.is_empty()) vision_->to(dtype, non_blocking);
}
void LlavaModelImpl::to(torch::Device device, bool non_blocking) {
    torch::nn::Module::to(device, non_blocking);
    llm_->to(device, non_blocking);
    if (!vision_.is_empty()) vision_->to(device, non_blocking);
}
void LlavaModelImpl::train(bool on) {
    torch::nn::Module::train(on);
    llm_->train(on);  // the decoder object is not registered itself, only its children
    if (!vision_.is_empty()) vision_->eval();
}

// ---------------------------------------------------------------------------------------------
void load_projector(Projector & projector, const std::string & path) {
    io::TensorMap all = fs::is_directory(path) ? io::load_checkpoint_dir(path) : io::load_safetensors(path);
    io::TensorMap state;
    for (auto & [key, t] : all) {
        std::string k = key;
        const size_t at = k.find("mm_projector.");
        if (at != std::string::npos) k = k.substr(at + std::string("mm_projector.").size());
        if (k.rfind("image_spatial_proj.", 0) == 0) k = k.substr(std::string("image_spatial_proj.").size());
        TORCH_CHECK(state.emplace(k, t).second, "projector checkpoint ", path, ": two keys map to '", k, "'");
    }
    io::load_state_strict(*projector, state, path);
}

LlavaModel build_llava(const LlavaBuildOptions & o) {
    CausalLM llm = io::load_causal_lm(o.llm_dir, o.dtype);
    const std::string llm_config = (fs::path(o.llm_dir) / "config.json").string();
    VisionTower tower{nullptr};
    Projector projector{nullptr};
    if (!o.vision_dir.empty()) {
        tower = build_vision_tower(o.vision_dir, o.dtype);
        ProjectorConfig pc;
        pc.type = o.projector_type;
        pc.d_vision = tower->hidden_size();
        pc.d_model = llm->config().hidden_size;
        projector = Projector(pc, o.projector_seed);
        if (!o.projector_checkpoint.empty()) {
            try {
                load_projector(projector, o.projector_checkpoint);
            } catch (const std::exception & e) {
                throw std::runtime_error("projector checkpoint " + o.projector_checkpoint + " does not fit a " +
                                         pc.type + " projector " + std::to_string(pc.d_vision) + " -> " +
                                         std::to_string(pc.d_model) + " (vision tower " + tower->config().source +
                                         ", LLM " + llm_config + "): " + e.what());
            }
        }
        projector->to(o.dtype);
    }
    return LlavaModel(llm, tower, projector, o.select_layer, o.select_feature, llm_config);
}

}  // namespace idamoe::model
