// CLIP / SigLIP vision towers; see vision_tower.h and docs/architectures.md sections 1-2.
// Shape legend: B images, C channels, H/W pixels, N tokens, P patches, D vision width.
#include "model/vision_tower.h"

#include "io/hf_loader.h"
#include "io/safetensors.h"

#include <nlohmann/json.hpp>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <type_traits>
#include <stdexcept>

namespace idamoe::model {

namespace nn = torch::nn;
namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

std::string read_file_text(const std::string & path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw std::runtime_error("vision config: cannot open " + path);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
}

template <class T> T field_or(const json & j, const char * key, T fallback, const std::string & source) {
    if (!j.contains(key) || j[key].is_null()) return fallback;
    if constexpr (std::is_integral_v<T>) {
        // nlohmann converts a float like 5.7e128 to an integer with undefined behaviour (found by
        // fuzz_model_config): only exact integers are accepted.
        if (!j[key].is_number_integer() ||
            (j[key].is_number_unsigned() && j[key].template get<uint64_t>() > static_cast<uint64_t>(INT64_MAX)))
            throw std::runtime_error(source + ": vision config field '" + key + "' must be an integer, got " + j[key].dump());
    }
    try {
        return j[key].get<T>();
    } catch (const json::exception & e) {
        throw std::runtime_error(source + ": vision config field '" + key + "' has the wrong type: " + e.what());
    }
}

std::vector<double> triple_or(const json & j, const char * key, std::vector<double> fallback, const std::string & source) {
    auto v = field_or<std::vector<double>>(j, key, fallback, source);
    if (v.size() != 3) throw std::runtime_error(source + ": '" + std::string(key) + "' must have 3 entries");
    return v;
}

}  // namespace

VisionConfig vision_config_from_json_text(const std::string & json_text, const std::string & source) {
    json root;
    try {
        root = json::parse(json_text);
    } catch (const json::exception & e) {
        throw std::runtime_error(source + ": not valid JSON: " + e.what());
    }
    const std::string model_type = field_or<std::string>(root, "model_type", "", source);
    const json * vj = &root;
    VisionConfig c;
    if (model_type == "clip" || model_type == "siglip") {
        if (!root.contains("vision_config") || !root["vision_config"].is_object())
            throw std::runtime_error(source + ": model_type '" + model_type + "' but no vision_config object");
        vj = &root["vision_config"];
    } else if (model_type != "clip_vision_model" && model_type != "siglip_vision_model") {
        throw std::runtime_error(source + ": model_type '" + model_type +
                                 "' is not a vision tower (expected clip, clip_vision_model, siglip or "
                                 "siglip_vision_model)");
    }
    // Fallbacks are the HF CLIPVisionConfig / SiglipVisionConfig constructor defaults.
    const bool clip = model_type.rfind("clip", 0) == 0;
    c.arch = clip ? VisionArch::kClip : VisionArch::kSiglip;
    c.d_model = field_or<int64_t>(*vj, "hidden_size", 768, source);
    c.d_ff = field_or<int64_t>(*vj, "intermediate_size", 3072, source);
    c.n_layer = field_or<int64_t>(*vj, "num_hidden_layers", 12, source);
    c.n_head = field_or<int64_t>(*vj, "num_attention_heads", 12, source);
    c.n_channel = field_or<int64_t>(*vj, "num_channels", 3, source);
    c.image_size = field_or<int64_t>(*vj, "image_size", 224, source);
    c.patch_size = field_or<int64_t>(*vj, "patch_size", clip ? 32 : 16, source);
    c.norm_eps = field_or<double>(*vj, "layer_norm_eps", clip ? 1e-5 : 1e-6, source);
    c.act = field_or<std::string>(*vj, "hidden_act", clip ? "quick_gelu" : "gelu_pytorch_tanh", source);
    if (!clip) {  // SiglipImageProcessor: pixels scaled to [-1, 1]
        c.image_mean = {0.5, 0.5, 0.5};
        c.image_std = {0.5, 0.5, 0.5};
    }
    c.source = source;

    auto bad = [&](const std::string & what) { throw std::runtime_error(source + ": invalid vision config: " + what); };
    if (c.d_model <= 0 || c.d_ff <= 0 || c.n_layer <= 0 || c.n_head <= 0 || c.n_channel <= 0) bad("non-positive size");
    if (c.d_model % c.n_head != 0)
        bad("hidden_size " + std::to_string(c.d_model) + " not divisible by num_attention_heads " + std::to_string(c.n_head));
    if (c.patch_size <= 0 || c.image_size < c.patch_size)
        bad("image_size " + std::to_string(c.image_size) + " smaller than patch_size " + std::to_string(c.patch_size));
    try {
        vit_activation_from_name(c.act);
    } catch (const std::exception & e) {
        bad(e.what());
    }
    return c;
}

VisionConfig vision_config_from_json(const std::string & path) {
    if (!fs::is_directory(path)) return vision_config_from_json_text(read_file_text(path), path);
    const std::string cfg_path = (fs::path(path) / "config.json").string();
    VisionConfig c = vision_config_from_json_text(read_file_text(cfg_path), cfg_path);
    const fs::path pre = fs::path(path) / "preprocessor_config.json";
    if (fs::exists(pre)) {
        json p;
        try {
            p = json::parse(read_file_text(pre.string()));
        } catch (const json::exception & e) {
            throw std::runtime_error(pre.string() + ": not valid JSON: " + e.what());
        }
        c.image_mean = triple_or(p, "image_mean", c.image_mean, pre.string());
        c.image_std = triple_or(p, "image_std", c.image_std, pre.string());
    }
    return c;
}

int64_t vision_tower_param_count(const VisionConfig & c, bool include_siglip_head) {
    const int64_t D = c.d_model, F = c.d_ff;
    const int64_t ln = 2 * D;
    const int64_t linear_DD = D * D + D;
    const int64_t mlp = (F * D + F) + (D * F + D);
    int64_t n = D * c.n_channel * c.patch_size * c.patch_size;  // patch conv weight
    if (!c.has_cls()) n += D;                                   // SigLIP conv bias
    if (c.has_cls()) n += D + ln;                               // class_embedding, pre_layrnorm
    n += c.n_token() * D;                                       // position_embedding
    n += c.n_layer * (2 * ln + 4 * linear_DD + mlp);            // encoder layers
    n += ln;                                                    // post_layernorm
    if (include_siglip_head && c.arch == VisionArch::kSiglip)
        n += D + (3 * D * D + 3 * D) + linear_DD + ln + mlp;  // probe, in_proj, out_proj, layernorm, mlp
    return n;
}

// ---------------------------------------------------------------------------------------------
VisionEmbeddingsImpl::VisionEmbeddingsImpl(const VisionConfig & cfg) : cfg_(cfg) {
    if (cfg.has_cls()) class_embedding = register_parameter("class_embedding", torch::randn({cfg.d_model}));
    // CLIP's patch conv has no bias, SigLIP's has one (architectures.md 1.3 / 2.3).
    patch_embedding = register_module(
        "patch_embedding",
        nn::Conv2d(nn::Conv2dOptions(cfg.n_channel, cfg.d_model, cfg.patch_size).stride(cfg.patch_size).bias(!cfg.has_cls())));
    position_embedding = register_module("position_embedding", nn::Embedding(cfg.n_token(), cfg.d_model));
}

torch::Tensor VisionEmbeddingsImpl::forward(const torch::Tensor & pixels_BCHW) {
    TORCH_CHECK(pixels_BCHW.dim() == 4 && pixels_BCHW.size(1) == cfg_.n_channel &&
                    pixels_BCHW.size(2) == cfg_.image_size && pixels_BCHW.size(3) == cfg_.image_size,
                "vision tower (", cfg_.source, "): expected pixels [B, ", cfg_.n_channel, ", ", cfg_.image_size, ", ",
                cfg_.image_size, "], got ", pixels_BCHW.sizes());
    const torch::Tensor & w = patch_embedding->weight;
    torch::Tensor x = pixels_BCHW.to(w.device(), w.scalar_type());
    torch::Tensor p_BDgg = patch_embedding(x);                     // [B, D, grid, grid]
    torch::Tensor x_BPD = p_BDgg.flatten(2).transpose(1, 2);       // row-major over the patch grid
    if (cfg_.has_cls()) {
        torch::Tensor cls_B1D = class_embedding.to(x_BPD.scalar_type()).view({1, 1, -1}).expand({x_BPD.size(0), 1, -1});
        x_BPD = torch::cat({cls_B1D, x_BPD}, 1);                   // [B, 1 + P, D]
    }
    return x_BPD + position_embedding->weight.unsqueeze(0);       // position ids 0..N-1
}

VisionTransformerImpl::VisionTransformerImpl(const VisionConfig & c) {
    embeddings = register_module("embeddings", VisionEmbeddings(c));
    if (c.has_cls())
        pre_layrnorm = register_module("pre_layrnorm", nn::LayerNorm(nn::LayerNormOptions({c.d_model}).eps(c.norm_eps)));
    encoder = register_module("encoder", VitEncoder(c.n_layer, c.d_model, c.d_ff, c.n_head, c.norm_eps,
                                                    vit_activation_from_name(c.act)));
    post_layernorm = register_module("post_layernorm", nn::LayerNorm(nn::LayerNormOptions({c.d_model}).eps(c.norm_eps)));
}

// ---------------------------------------------------------------------------------------------
VisionTowerImpl::VisionTowerImpl(const VisionConfig & cfg) : cfg_(cfg) {
    vision_model = register_module("vision_model", VisionTransformer(cfg));
}

int64_t VisionTowerImpl::resolve_layer_index(int64_t up_to) const {
    const int64_t n_states = cfg_.n_layer + 1;
    const int64_t idx = up_to < 0 ? n_states + up_to : up_to;
    TORCH_CHECK(idx >= 0 && idx < n_states, "vision tower (", cfg_.source, "): hidden-state index ", up_to,
                " out of range for ", cfg_.n_layer, " layers (valid: ", -n_states, " .. ", n_states - 1, ")");
    return idx;
}

std::vector<torch::Tensor> VisionTowerImpl::hidden_states(const torch::Tensor & pixels_BCHW, int64_t up_to) {
    const int64_t n_run = resolve_layer_index(up_to);
    torch::Tensor x_BND = vision_model->embeddings(pixels_BCHW);
    if (cfg_.has_cls()) x_BND = vision_model->pre_layrnorm(x_BND);  // CLIP: hidden_states[0] is after it
    return vision_model->encoder(x_BND, n_run);
}

torch::Tensor VisionTowerImpl::last_hidden_state(const torch::Tensor & pixels_BCHW) {
    torch::Tensor h_BND = hidden_states(pixels_BCHW, -1).back();
    return cfg_.has_cls() ? h_BND : vision_model->post_layernorm(h_BND);
}

torch::Tensor VisionTowerImpl::features(const torch::Tensor & pixels_BCHW, int64_t select_layer,
                                        const std::string & select_feature) {
    TORCH_CHECK(select_feature == "patch" || select_feature == "cls_patch", "vision tower: select_feature must be ",
                "patch or cls_patch, got '", select_feature, "'");
    torch::Tensor h_BND = hidden_states(pixels_BCHW, select_layer).back();
    if (select_feature == "patch" && cfg_.has_cls()) return h_BND.slice(1, 1);  // drop CLS
    return h_BND;
}

int64_t VisionTowerImpl::num_image_tokens(const std::string & select_feature) const {
    TORCH_CHECK(select_feature == "patch" || select_feature == "cls_patch", "vision tower: select_feature must be ",
                "patch or cls_patch, got '", select_feature, "'");
    return select_feature == "patch" ? cfg_.n_patch() : cfg_.n_token();
}

// ---------------------------------------------------------------------------------------------
void load_vision_tower(VisionTower & tower, const std::string & path) {
    io::TensorMap all = fs::is_directory(path) ? io::load_checkpoint_dir(path) : io::load_safetensors(path);
    io::TensorMap vision;
    for (auto & [name, t] : all) {
        if (name.rfind("vision_model.", 0) != 0) continue;          // text_model.*, logit_scale, ...
        if (name.rfind("vision_model.head.", 0) == 0) continue;     // SigLIP attention-pooling head: unused
        if (name == "vision_model.embeddings.position_ids") continue;  // int64 buffer of old .bin exports
        vision.emplace(name, t);
    }
    TORCH_CHECK(!vision.empty(), "vision tower: ", path, " holds no vision_model.* tensors (", all.size(),
                " tensors in total)");
    io::load_state_strict(*tower, vision, path);
}

VisionTower build_vision_tower(const std::string & dir, torch::Dtype dtype) {
    VisionTower tower(vision_config_from_json(dir));
    load_vision_tower(tower, dir);
    tower->to(dtype);
    tower->eval();
    for (auto & p : tower->parameters()) p.set_requires_grad(false);
    return tower;
}

std::map<std::string, torch::Tensor> vision_forward_dump(VisionTower & tower, const torch::Tensor & pixels_BCHW,
                                                         const std::vector<std::string> & grad_params) {
    std::map<std::string, torch::Tensor> out;
    {
        torch::NoGradGuard no_grad;
        std::vector<torch::Tensor> hs = tower->hidden_states(pixels_BCHW, -1);
        for (size_t i = 0; i < hs.size(); ++i) out["hidden_states." + std::to_string(i)] = hs[i];
        out["hidden_states_minus2"] = hs[hs.size() - 2];
        out["last_hidden_state"] = tower->last_hidden_state(pixels_BCHW);
    }
    if (grad_params.empty()) return out;
    auto params = tower->named_parameters();
    for (const auto & name : grad_params)
        TORCH_CHECK(params.contains(name), "vision tower: no parameter named '", name, "' to take a gradient of");
    std::vector<torch::Tensor> wanted;
    for (const auto & name : grad_params) wanted.push_back(params[name]);
    std::vector<bool> was_trainable;
    for (auto & p : wanted) was_trainable.push_back(p.requires_grad()), p.set_requires_grad(true);
    torch::Tensor S = tower->hidden_states(pixels_BCHW, -2).back().sum();  // fixtures' grads_of
    // allow_unused: the last layer's parameters do not reach hidden_states[-2]; their gradient is 0.
    std::vector<torch::Tensor> grads = torch::autograd::grad({S}, wanted, {}, c10::nullopt, false, true);
    for (size_t i = 0; i < wanted.size(); ++i) {
        wanted[i].set_requires_grad(was_trainable[i]);
        out["grad." + grad_params[i]] = grads[i].defined() ? grads[i] : torch::zeros_like(wanted[i]);
    }
    return out;
}

}  // namespace idamoe::model
