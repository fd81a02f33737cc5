// make-tiny-models: random-init, seeded, float32 Hugging Face model directories for the demo.
//
//   make-tiny-models --tokenizer runs/demo/tokenizer.json --out runs/demo/models [--seed 0]
//                    [--pretrain-tower runs/demo/data/tower_labels.jsonl]
//
// Writes OUT/tiny-clip  (CLIPVisionModel: config.json, model.safetensors, preprocessor_config.json)
//    and OUT/tiny-qwen2 (Qwen2ForCausalLM: config.json, model.safetensors, generation_config.json,
//                        tokenizer.json, tokenizer_config.json), tensor names exactly as HF's.
// Sizes default to a demo that trains 3 stages on 2 CPU cores in minutes: a 56 px / patch 14 tower
// (16 patches + CLS) and a 4-layer, 128-wide decoder with GQA and tied embeddings. With --pretrain-tower
// the tower is then trained briefly on labelled shapes images (tower_pretrain.h says why).
#include "io/hf_loader.h"
#include "io/safetensors.h"
#include "tower_pretrain.h"

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>

namespace fs = std::filesystem;
using json = nlohmann::ordered_json;

namespace {

struct VisionArgs {
    int64_t image_size = 56, patch = 14, hidden = 128, layers = 2, heads = 4, intermediate = 512;
};
struct LlmArgs {
    int64_t hidden = 128, layers = 4, heads = 4, kv_heads = 2, intermediate = 384, max_positions = 512;
    double rope_theta = 10000.0;
    // initializer_range; <= 0: 1/sqrt(hidden). HF's 0.02 suits widths near 2048 (1/sqrt(2048) = 0.022);
    // at width 128 it leaves q.k ~16x smaller than unit-variance init, the attention stays uniform for
    // longer, and in the demo the decoder did not start reading the image within stage 2 (held-out colour
    // accuracy 19% after 3000 steps with 0.02, 69% with 1/sqrt(128) = 0.088; chance 17%).
    double init_std = 0.0;
    // Mimetic attention init (Trockman & Kolter 2023, arXiv 2305.09828): each query head's W_q becomes
    // mimetic * its KV group's W_k + sqrt(1 - mimetic^2) * its random W_q, so q.k starts as a token
    // similarity. 0: plain random. docs/demo_notes.md: on word-pair recall 89% vs 16% after the same steps.
    double mimetic = 0.0;
};

// HF-style init (normal, zero biases, unit norm weights) with initializer_range 0.02 (CLIPVisionConfig
// default) for the tower and 1/sqrt(width) for the decoder (LlmArgs::init_std says why). The CLIP patch
// convolution instead gets unit fan-in variance: this tower stays frozen and random in the demo, so its
// features must carry the pixels' information rather than be swamped by the position embeddings.
torch::Tensor normal(std::vector<int64_t> shape, double std) { return torch::randn(shape, torch::kFloat32) * std; }

void write_json(const fs::path & p, const json & j) {
    std::ofstream o(p, std::ios::binary);
    o << j.dump(2) << "\n";
    if (!o) throw std::runtime_error(p.string() + ": cannot write");
}

// Same flattening rule HF uses for save_pretrained: one file, F32, metadata format=pt.
int64_t save(const fs::path & dir, const idamoe::io::TensorMap & t) {
    idamoe::io::save_safetensors((dir / "model.safetensors").string(), t);
    int64_t n = 0;
    for (const auto & [k, v] : t) n += v.numel();
    return n;
}

int64_t make_clip(const fs::path & dir, const VisionArgs & a) {
    fs::create_directories(dir);
    const int64_t D = a.hidden, F = a.intermediate, n_pos = (a.image_size / a.patch) * (a.image_size / a.patch) + 1;
    idamoe::io::TensorMap t;
    const std::string e = "vision_model.embeddings.";
    t[e + "class_embedding"] = normal({D}, 0.02);
    t[e + "patch_embedding.weight"] = normal({D, 3, a.patch, a.patch}, 1.0 / std::sqrt(3.0 * a.patch * a.patch));
    t[e + "position_embedding.weight"] = normal({n_pos, D}, 0.02);
    t["vision_model.pre_layrnorm.weight"] = torch::ones({D});  // sic: HF's spelling
    t["vision_model.pre_layrnorm.bias"] = torch::zeros({D});
    for (int64_t i = 0; i < a.layers; ++i) {
        const std::string p = "vision_model.encoder.layers." + std::to_string(i) + ".";
        for (const char * proj : {"q_proj", "k_proj", "v_proj", "out_proj"}) {
            t[p + "self_attn." + proj + ".weight"] = normal({D, D}, 0.02);
            t[p + "self_attn." + proj + ".bias"] = torch::zeros({D});
        }
        for (const char * ln : {"layer_norm1", "layer_norm2"}) {
            t[p + ln + ".weight"] = torch::ones({D});
            t[p + ln + ".bias"] = torch::zeros({D});
        }
        t[p + "mlp.fc1.weight"] = normal({F, D}, 0.02);
        t[p + "mlp.fc1.bias"] = torch::zeros({F});
        t[p + "mlp.fc2.weight"] = normal({D, F}, 0.02);
        t[p + "mlp.fc2.bias"] = torch::zeros({D});
    }
    t["vision_model.post_layernorm.weight"] = torch::ones({D});
    t["vision_model.post_layernorm.bias"] = torch::zeros({D});
    const int64_t n = save(dir, t);

    write_json(dir / "config.json", {{"architectures", json::array({"CLIPVisionModel"})},
                                     {"attention_dropout", 0.0},
                                     {"hidden_act", "quick_gelu"},
                                     {"hidden_size", D},
                                     {"image_size", a.image_size},
                                     {"initializer_factor", 1.0},
                                     {"initializer_range", 0.02},
                                     {"intermediate_size", F},
                                     {"layer_norm_eps", 1e-5},
                                     {"model_type", "clip_vision_model"},
                                     {"num_attention_heads", a.heads},
                                     {"num_channels", 3},
                                     {"num_hidden_layers", a.layers},
                                     {"patch_size", a.patch},
                                     {"projection_dim", D},
                                     {"torch_dtype", "float32"}});
    // openai/clip-vit-large-patch14-336's processor, at this tower's size (architectures.md §1).
    write_json(dir / "preprocessor_config.json", {{"crop_size", {{"height", a.image_size}, {"width", a.image_size}}},
                                                  {"do_center_crop", true},
                                                  {"do_convert_rgb", true},
                                                  {"do_normalize", true},
                                                  {"do_rescale", true},
                                                  {"do_resize", true},
                                                  {"image_mean", {0.48145466, 0.4578275, 0.40821073}},
                                                  {"image_processor_type", "CLIPImageProcessor"},
                                                  {"image_std", {0.26862954, 0.26130258, 0.27577711}},
                                                  {"resample", 3},
                                                  {"rescale_factor", 1.0 / 255.0},
                                                  {"size", {{"shortest_edge", a.image_size}}}});
    return n;
}

int64_t make_qwen2(const fs::path & dir, const LlmArgs & a, const fs::path & tokenizer_json) {
    fs::create_directories(dir);
    std::ifstream in(tokenizer_json);
    if (!in) throw std::runtime_error(tokenizer_json.string() + ": cannot read tokenizer");
    json tok = json::parse(in);
    int64_t vocab = 0, eos = -1, pad = -1;
    for (const auto & [k, id] : tok.at("model").at("vocab").items()) vocab = std::max<int64_t>(vocab, id.get<int64_t>() + 1);
    json added_decoder = json::object();
    for (const auto & t : tok.at("added_tokens")) {
        const int64_t id = t.at("id").get<int64_t>();
        vocab = std::max(vocab, id + 1);
        const std::string c = t.at("content");
        if (c == "<|endoftext|>") eos = id;
        if (c == "<|extra_0|>") pad = id;
        added_decoder[std::to_string(id)] = {{"content", c}, {"lstrip", false}, {"normalized", false},
                                             {"rstrip", false}, {"single_word", false}, {"special", true}};
    }
    if (eos < 0 || pad < 0)
        throw std::runtime_error(tokenizer_json.string() + ": expected added tokens <|endoftext|> and <|extra_0|>");
    fs::copy_file(tokenizer_json, dir / "tokenizer.json", fs::copy_options::overwrite_existing);

    const int64_t D = a.hidden, F = a.intermediate, hd = a.hidden / a.heads, kv = a.kv_heads * hd;
    const double sd = a.init_std;
    idamoe::io::TensorMap t;
    t["model.embed_tokens.weight"] = normal({vocab, D}, sd);  // tied: also the LM head
    for (int64_t i = 0; i < a.layers; ++i) {
        const std::string p = "model.layers." + std::to_string(i) + ".";
        t[p + "input_layernorm.weight"] = torch::ones({D});
        t[p + "post_attention_layernorm.weight"] = torch::ones({D});
        t[p + "self_attn.q_proj.weight"] = normal({D, D}, sd);
        t[p + "self_attn.q_proj.bias"] = torch::zeros({D});
        t[p + "self_attn.k_proj.weight"] = normal({kv, D}, sd);
        t[p + "self_attn.k_proj.bias"] = torch::zeros({kv});
        if (a.mimetic > 0) {  // q rows of head h <- its group's k rows (h / (heads / kv_heads))
            auto & q = t[p + "self_attn.q_proj.weight"];
            const auto & k = t[p + "self_attn.k_proj.weight"];
            const int64_t per_group = a.heads / a.kv_heads;
            for (int64_t h = 0; h < a.heads; ++h) {
                const int64_t g = h / per_group;
                q.slice(0, h * hd, (h + 1) * hd).mul_(std::sqrt(1.0 - a.mimetic * a.mimetic)).add_(k.slice(0, g * hd, (g + 1) * hd), a.mimetic);
            }
        }
        t[p + "self_attn.v_proj.weight"] = normal({kv, D}, sd);
        t[p + "self_attn.v_proj.bias"] = torch::zeros({kv});
        t[p + "self_attn.o_proj.weight"] = normal({D, D}, sd);
        t[p + "mlp.gate_proj.weight"] = normal({F, D}, sd);
        t[p + "mlp.up_proj.weight"] = normal({F, D}, sd);
        t[p + "mlp.down_proj.weight"] = normal({D, F}, sd);
    }
    t["model.norm.weight"] = torch::ones({D});
    const int64_t n = save(dir, t);

    write_json(dir / "config.json", {{"architectures", json::array({"Qwen2ForCausalLM"})},
                                     {"attention_dropout", 0.0},
                                     {"bos_token_id", eos},  // Qwen2: bos = eos = <|endoftext|>, never prepended
                                     {"eos_token_id", eos},
                                     {"pad_token_id", pad},
                                     {"hidden_act", "silu"},
                                     {"hidden_size", D},
                                     {"initializer_range", sd},
                                     {"intermediate_size", F},
                                     {"max_position_embeddings", a.max_positions},
                                     {"max_window_layers", a.layers},
                                     {"model_type", "qwen2"},
                                     {"num_attention_heads", a.heads},
                                     {"num_hidden_layers", a.layers},
                                     {"num_key_value_heads", a.kv_heads},
                                     {"rms_norm_eps", 1e-6},
                                     {"rope_theta", a.rope_theta},
                                     {"sliding_window", nullptr},
                                     {"tie_word_embeddings", true},
                                     {"torch_dtype", "float32"},
                                     {"use_cache", true},
                                     {"use_sliding_window", false},
                                     {"vocab_size", vocab}});
    write_json(dir / "generation_config.json", {{"bos_token_id", eos}, {"eos_token_id", eos}, {"pad_token_id", pad},
                                                {"do_sample", false}, {"max_new_tokens", 16}});
    // Qwen2's tokenizer_config.json fields (architectures.md §4), with MoE-LLaVA's distinct pad.
    write_json(dir / "tokenizer_config.json", {{"add_bos_token", false},
                                               {"add_prefix_space", false},
                                               {"added_tokens_decoder", added_decoder},
                                               {"bos_token", nullptr},
                                               {"clean_up_tokenization_spaces", false},
                                               {"eos_token", "<|endoftext|>"},
                                               {"errors", "replace"},
                                               {"model_max_length", a.max_positions},
                                               {"pad_token", "<|extra_0|>"},
                                               {"split_special_tokens", false},
                                               {"tokenizer_class", "Qwen2Tokenizer"},
                                               {"unk_token", nullptr}});
    return n;
}

}  // namespace

int main(int argc, char ** argv) {
    CLI::App app{"make-tiny-models: seeded random CLIP vision tower + Qwen2 decoder in Hugging Face layout"};
    std::string out, tokenizer;
    int64_t seed = 0;
    VisionArgs v;
    LlmArgs l;
    app.add_option("--out", out, "Directory that receives tiny-clip/ and tiny-qwen2/")->required();
    app.add_option("--tokenizer", tokenizer, "tokenizer.json (train-bpe-tokenizer); sets vocab_size")->required()->check(CLI::ExistingFile);
    app.add_option("--seed", seed, "Seed of the random init");
    app.add_option("--image-size", v.image_size, "Vision: image side (pixels)");
    app.add_option("--patch", v.patch, "Vision: patch size");
    app.add_option("--vision-hidden", v.hidden, "Vision: width");
    app.add_option("--vision-layers", v.layers, "Vision: encoder layers");
    app.add_option("--vision-heads", v.heads, "Vision: attention heads");
    app.add_option("--vision-intermediate", v.intermediate, "Vision: MLP width");
    app.add_option("--llm-hidden", l.hidden, "LLM: width");
    app.add_option("--llm-layers", l.layers, "LLM: decoder layers");
    app.add_option("--llm-heads", l.heads, "LLM: query heads");
    app.add_option("--llm-kv-heads", l.kv_heads, "LLM: key/value heads (GQA)");
    app.add_option("--llm-intermediate", l.intermediate, "LLM: MLP width");
    app.add_option("--max-positions", l.max_positions, "LLM: max_position_embeddings");
    idamoe::demo::TowerPretrainOptions pt;
    app.add_option("--pretrain-tower", pt.labels, "tower_labels.jsonl (gen-shapes-dataset --n-tower): train the tower on it "
                   "(tower_pretrain.h); without it the tower stays random")->check(CLI::ExistingFile);
    app.add_option("--pretrain-image-root", pt.image_root, "Folder the labels' image paths are relative to (default: <labels folder>/images)");
    app.add_option("--pretrain-steps", pt.steps, "Tower pretraining: optimizer steps")->check(CLI::PositiveNumber);
    app.add_option("--pretrain-batch", pt.batch, "Tower pretraining: images per step")->check(CLI::PositiveNumber);
    app.add_option("--pretrain-lr", pt.lr, "Tower pretraining: Adam learning rate")->check(CLI::PositiveNumber);
    app.add_flag("--pretrain-position", pt.position, "Tower pretraining: also teach every token its column and row");
    app.add_flag("--pretrain-scene", pt.scene, "Tower pretraining: also teach every token which shapes and colours the image "
                 "holds, and how many of each shape");
    app.add_flag("--pretrain-scene-on-cls", pt.scene_on_cls, "Tower pretraining: the scene heads on the CLS token only "
                 "(train with vision.select_feature cls_patch)");
    app.add_option("--pretrain-scene-weight", pt.scene_weight, "Tower pretraining: scale of the scene losses")->check(CLI::NonNegativeNumber);
    app.add_flag("--pretrain-scene-on-objects", pt.scene_on_objects, "Tower pretraining: the scene heads on the object tokens "
                 "only (background tokens stay empty)");
    app.add_flag("!--pretrain-scene-no-counts", pt.scene_counts, "Tower pretraining: the scene heads learn presence only, "
                 "not the per-shape counts");
    app.add_option("--pretrain-scene-dims", pt.scene_dims, "Tower pretraining: the scene heads read only the first N widths, the "
                   "cell heads the rest (0: both read all)")->check(CLI::NonNegativeNumber);
    app.add_option("--pretrain-scene-from", pt.scene_from, "Tower pretraining: the step at which the scene losses join (the cell "
                   "features form first)")->check(CLI::NonNegativeNumber);
    app.add_option("--llm-mimetic", l.mimetic, "LLM: mimetic attention init, W_q = MIX * W_k(group) + sqrt(1 - MIX^2) * W_q (0: off)")
        ->check(CLI::Range(0.0, 1.0));
    app.add_option("--llm-init-std", l.init_std, "LLM: std of the normal init of linear and embedding weights (initializer_range); <= 0: 1/sqrt(width)");
    CLI11_PARSE(app, argc, argv);

    const auto t0 = std::chrono::steady_clock::now();
    try {
        if (v.image_size % v.patch != 0) throw std::invalid_argument("--image-size must be a multiple of --patch");
        if (v.hidden % v.heads != 0 || l.hidden % l.heads != 0 || l.heads % l.kv_heads != 0)
            throw std::invalid_argument("widths must divide by heads, and heads by kv-heads");
        if (l.init_std <= 0) l.init_std = 1.0 / std::sqrt(static_cast<double>(l.hidden));
        torch::manual_seed(static_cast<uint64_t>(seed));
        torch::NoGradGuard no_grad;
        const int64_t n_vis = make_clip(fs::path(out) / "tiny-clip", v);
        const int64_t n_llm = make_qwen2(fs::path(out) / "tiny-qwen2", l, tokenizer);
        if (!pt.labels.empty()) {  // after both inits, so the decoder's weights do not depend on it
            const fs::path dir = fs::path(out) / "tiny-clip";
            idamoe::model::VisionTower tower = idamoe::model::build_vision_tower(dir.string());
            const auto proc = idamoe::data::ImageProcessorConfig::from_dir(dir.string(), /*pad=*/false);
            pt.seed = static_cast<uint64_t>(seed);
            const auto t1 = std::chrono::steady_clock::now();
            const auto r = idamoe::demo::pretrain_tower(tower, proc, pt);
            save(dir, idamoe::io::module_state(*tower));
            char extra[160] = "";  // what the optional heads measured
            int used = 0;
            if (pt.position) used = std::snprintf(extra, sizeof extra, ", column %.1f%%", 100 * r.column);
            if (pt.scene)
                used += std::snprintf(extra + used, sizeof extra - used, "; %s: scene presence %.1f%% (all absent: %.1f%%)",
                                      pt.scene_on_cls ? "CLS" : pt.scene_on_objects ? "object tokens" : "all tokens",
                                      100 * r.scene_presence, 100 * r.scene_presence_floor);
            if (pt.scene && pt.scene_counts)
                std::snprintf(extra + used, sizeof extra - used, ", shape counts %.1f%% (all 0: %.1f%%)", 100 * r.scene_count,
                              100 * r.scene_count_floor);
            std::printf("make-tiny-models: tower pretrained on %lld images, %lld steps x %lld (%.1f s, final loss %.3f); "
                        "held-out %lld images, object tokens: shape %.1f%%, colour %.1f%%, size %.1f%%%s\n",
                        static_cast<long long>(r.train_images), static_cast<long long>(pt.steps), static_cast<long long>(pt.batch),
                        std::chrono::duration<double>(std::chrono::steady_clock::now() - t1).count(), r.final_loss,
                        static_cast<long long>(r.heldout_images), 100 * r.shape, 100 * r.colour, 100 * r.size,
                        extra);
        }
        const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        std::printf("make-tiny-models: tiny-clip %lld params (%lld patches + CLS), tiny-qwen2 %lld params, in %s (%.2f s)\n",
                    static_cast<long long>(n_vis), static_cast<long long>((v.image_size / v.patch) * (v.image_size / v.patch)),
                    static_cast<long long>(n_llm), out.c_str(), secs);
    } catch (const std::exception & e) {
        std::fprintf(stderr, "make-tiny-models: %s\n", e.what());
        return 1;
    }
    return 0;
}
