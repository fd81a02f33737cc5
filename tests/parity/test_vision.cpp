// Vision-tower parity against Hugging Face transformers reference tensors (tests/fixtures/hf/
// {clip_vision,siglip_vision}, README section 1), config parsing, strict loading and parameter counts.
#include "io/safetensors.h"
#include "model/vision_tower.h"
#include "test_utils.h"
#include "tolerance.h"

#include <catch2/catch.hpp>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <sys/wait.h>
#include <fstream>
#include <sstream>

using namespace idamoe;
using idamoe::test::fixture_path;
using idamoe::test::close_to_ref;
using idamoe::test::TempDir;
using idamoe::test::write_text;

namespace {

struct Fixture {
    model::VisionTower tower{nullptr};
    io::TensorMap inputs, outputs;
};

Fixture load_fixture(const std::string & name) {
    Fixture f;
    const std::string dir = fixture_path("hf/" + name);
    f.tower = model::VisionTower(model::vision_config_from_json(dir));
    model::load_vision_tower(f.tower, dir);
    f.tower->eval();
    f.inputs = io::load_safetensors(dir + "/inputs.safetensors");
    f.outputs = io::load_safetensors(dir + "/outputs.safetensors");
    return f;
}

int64_t numel_of(torch::nn::Module & m) {
    int64_t n = 0;
    for (const auto & p : m.parameters()) n += p.numel();
    return n;
}

void check_parity(const std::string & name) {
    std::printf("[vision] %s parity vs HF transformers 4.45\n", name.c_str());
    Fixture f = load_fixture(name);
    const torch::Tensor px = f.inputs.at("pixel_values");
    const auto & ref = f.outputs;

    std::vector<torch::Tensor> hs;
    {
        torch::NoGradGuard ng;
        hs = f.tower->hidden_states(px, -1);
    }
    REQUIRE(hs.size() == 3);
    for (size_t i = 0; i < hs.size(); ++i) {
        const std::string key = "hidden_states." + std::to_string(i);
        CHECK(close_to_ref(hs[i], ref.at(key), key));
    }
    {
        torch::NoGradGuard ng;
        auto partial = f.tower->hidden_states(px, -2);
        CHECK(partial.size() == 2);  // layer -2 runs one layer fewer
        CHECK(close_to_ref(partial.back(), ref.at("hidden_states_minus2"), "hidden_states_minus2"));
        CHECK(close_to_ref(f.tower->last_hidden_state(px), ref.at("last_hidden_state"), "last_hidden_state"));
        CHECK(close_to_ref(f.tower->features(px, -2, "cls_patch"), ref.at("hidden_states_minus2"),
                           "features(-2, cls_patch)"));
        torch::Tensor patch = f.tower->features(px, -2, "patch");
        const auto & cfg = f.tower->config();
        CHECK(patch.size(1) == f.tower->num_image_tokens("patch"));
        CHECK(patch.size(1) == cfg.n_patch());
        torch::Tensor ref_patch = cfg.has_cls() ? ref.at("hidden_states_minus2").slice(1, 1) : ref.at("hidden_states_minus2");
        CHECK(close_to_ref(patch, ref_patch, "features(-2, patch)"));
    }

    // Gradients of S = sum(hidden_states[-2]) w.r.t. stored parameters.
    auto params = f.tower->named_parameters();
    for (auto & p : f.tower->parameters()) p.set_requires_grad(true);
    torch::Tensor S = f.tower->features(px, -2, "cls_patch").sum();
    S.backward();
    for (const char * pname : {"vision_model.embeddings.patch_embedding.weight", "vision_model.encoder.layers.0.mlp.fc1.weight"}) {
        const std::string key = std::string("grad.") + pname;
        REQUIRE(params.contains(pname));
        REQUIRE(params[pname].grad().defined());
        CHECK(close_to_ref(params[pname].grad(), ref.at(key), key));
    }
    // The last layer never ran, so it received no gradient at all.
    CHECK_FALSE(params["vision_model.encoder.layers.1.mlp.fc1.weight"].grad().defined());
}

}  // namespace

TEST_CASE("vision: CLIP tower matches HF CLIPVisionModel (hidden states, features, gradients)", "[vision]") {
    check_parity("clip_vision");
}

TEST_CASE("vision: SigLIP tower matches HF SiglipVisionModel (hidden states, post-LN, gradients)", "[vision]") {
    check_parity("siglip_vision");
}

TEST_CASE("vision: SigLIP checkpoint with pooling-head keys and a full CLIPModel checkpoint load", "[vision]") {
    // The SigLIP fixture carries vision_model.head.* (attention-pooling head); loading skips them.
    io::TensorMap sig = io::load_safetensors(fixture_path("hf/siglip_vision/model.safetensors"));
    int64_t head_numel = 0, head_keys = 0;
    for (const auto & [k, t] : sig)
        if (k.rfind("vision_model.head.", 0) == 0) head_numel += t.numel(), ++head_keys;
    REQUIRE(head_keys == 11);  // probe, in_proj {w,b}, out_proj {w,b}, layernorm {w,b}, mlp.fc{1,2} {w,b}
    model::VisionTower tower = model::build_vision_tower(fixture_path("hf/siglip_vision"));
    CHECK(torch::equal(tower->vision_model->post_layernorm->weight, sig.at("vision_model.post_layernorm.weight")));
    for (const auto & p : tower->parameters()) CHECK_FALSE(p.requires_grad());
    CHECK_FALSE(tower->is_training());
    // Counting: our tower + the checkpoint's head tensors = the count with the head included.
    CHECK(numel_of(*tower) == model::vision_tower_param_count(tower->config()));
    CHECK(numel_of(*tower) + head_numel == model::vision_tower_param_count(tower->config(), true));

    // A full CLIPModel checkpoint: text tower, projections, logit_scale and an old position_ids buffer.
    TempDir d;
    io::TensorMap full = io::load_safetensors(fixture_path("hf/clip_vision/model.safetensors"));
    full["text_model.embeddings.token_embedding.weight"] = torch::randn({16, 8});
    full["visual_projection.weight"] = torch::randn({32, 64});
    full["text_projection.weight"] = torch::randn({32, 8});
    full["logit_scale"] = torch::tensor(2.6592f);
    full["vision_model.embeddings.position_ids"] = torch::arange(10, torch::kInt64).unsqueeze(0);
    io::save_safetensors(d.str("model.safetensors"), full);
    write_text(d.str("config.json"), R"({"model_type": "clip", "vision_config": {"hidden_size": 64,
        "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "image_size": 42,
        "patch_size": 14}, "text_config": {"hidden_size": 8}})");
    model::VisionTower clip = model::build_vision_tower(d.str());
    CHECK(clip->config().act == "quick_gelu");
    CHECK(clip->config().norm_eps == 1e-5);
    Fixture ref = load_fixture("clip_vision");
    torch::NoGradGuard ng;
    CHECK(close_to_ref(clip->last_hidden_state(ref.inputs.at("pixel_values")), ref.outputs.at("last_hidden_state"),
                       "full CLIPModel checkpoint: last_hidden_state"));
}

TEST_CASE("vision: loading is strict within vision_model.*", "[vision]") {
    io::TensorMap w = io::load_safetensors(fixture_path("hf/clip_vision/model.safetensors"));
    auto load_error = [&](const io::TensorMap & tensors) -> std::string {
        TempDir d;
        io::save_safetensors(d.str("model.safetensors"), tensors);
        model::VisionTower t(model::vision_config_from_json(fixture_path("hf/clip_vision")));
        try {
            model::load_vision_tower(t, d.str());
        } catch (const std::exception & e) {
            return e.what();
        }
        return "<no error>";
    };
    io::TensorMap missing = w;
    missing.erase("vision_model.encoder.layers.1.mlp.fc2.bias");
    CHECK_THAT(load_error(missing), Catch::Contains("vision_model.encoder.layers.1.mlp.fc2.bias"));
    io::TensorMap extra = w;
    extra["vision_model.encoder.layers.2.mlp.fc2.bias"] = torch::zeros({64});
    CHECK_THAT(load_error(extra), Catch::Contains("vision_model.encoder.layers.2.mlp.fc2.bias"));
    io::TensorMap bad_shape = w;
    bad_shape["vision_model.embeddings.position_embedding.weight"] = torch::zeros({11, 64});
    CHECK_THAT(load_error(bad_shape), Catch::Contains("position_embedding"));
    CHECK_THAT(load_error({{"text_model.x", torch::zeros({1})}}), Catch::Contains("no vision_model"));
}

TEST_CASE("vision: config.json parsing, HF defaults and errors", "[vision]") {
    // google/siglip-so400m-patch14-384 config.json lists only non-defaults (architectures.md 2.2).
    model::VisionConfig s = model::vision_config_from_json_text(R"({"model_type": "siglip",
        "vision_config": {"hidden_size": 1152, "image_size": 384, "intermediate_size": 4304,
        "num_attention_heads": 16, "num_hidden_layers": 27, "patch_size": 14},
        "text_config": {"hidden_size": 1152, "intermediate_size": 4304, "num_attention_heads": 16,
        "num_hidden_layers": 27}})", "so400m/config.json");
    CHECK(s.arch == model::VisionArch::kSiglip);
    CHECK(s.act == "gelu_pytorch_tanh");
    CHECK(s.norm_eps == 1e-6);
    CHECK(s.n_channel == 3);
    CHECK(s.head_dim() == 72);
    CHECK(s.grid() == 27);  // floor(384 / 14): the valid conv drops the last 6 pixels
    CHECK(s.n_token() == 729);
    CHECK(s.image_mean == std::vector<double>{0.5, 0.5, 0.5});
    CHECK(s.image_std == std::vector<double>{0.5, 0.5, 0.5});

    // openai/clip-vit-large-patch14-336 vision_config (architectures.md 1.2).
    model::VisionConfig c = model::vision_config_from_json_text(R"({"model_type": "clip", "vision_config": {
        "hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24, "num_attention_heads": 16,
        "image_size": 336, "patch_size": 14, "projection_dim": 768}})", "clip336/config.json");
    CHECK(c.arch == model::VisionArch::kClip);
    CHECK(c.act == "quick_gelu");
    CHECK(c.norm_eps == 1e-5);
    CHECK(c.n_patch() == 576);
    CHECK(c.n_token() == 577);
    CHECK(c.image_mean[0] == 0.48145466);
    CHECK(c.image_std[2] == 0.27577711);

    // Parameter counts by hand (see vision_tower_param_count): CLIP-L/14-336 =
    //   patch 1024*3*14*14 + class 1024 + pos 577*1024 + pre-LN 2048
    //   + 24 * (2 LN 4096 + 4 * (1024^2 + 1024) + (4096*1024 + 4096) + (1024*4096 + 1024)) + post-LN 2048
    //   = 602112 + 1024 + 590848 + 2048 + 24 * 12596224 + 2048 = 303,507,456.
    CHECK(model::vision_tower_param_count(c) == 303507456);
    // SigLIP so400m: conv 1152*3*14*14 + 1152 + pos 729*1152
    //   + 27 * (4608 + 4 * (1152^2 + 1152) + (4304*1152 + 4304) + (1152*4304 + 1152)) + post-LN 2304
    //   = 678528 + 839808 + 27 * 15239504 + 2304 = 412,987,248 built here; the pooling head adds
    //   probe 1152 + in_proj 3456*1152 + 3456 + out_proj 1152^2 + 1152 + LN 2304 + MLP 9921872
    //   = 15,238,352, so the checkpoint's vision_model.* holds 428,225,600 ("400M" class).
    CHECK(model::vision_tower_param_count(s) == 412987248);
    CHECK(model::vision_tower_param_count(s, true) == 428225600);

    // The tiny fixtures: the formula equals what the module actually registers.
    for (const char * name : {"clip_vision", "siglip_vision"}) {
        model::VisionConfig cfg = model::vision_config_from_json(fixture_path(std::string("hf/") + name));
        model::VisionTower t(cfg);
        CHECK(numel_of(*t) == model::vision_tower_param_count(cfg));
    }

    auto error_of = [](const std::string & text) -> std::string {
        try {
            model::vision_config_from_json_text(text, "some/dir/config.json");
        } catch (const std::exception & e) {
            return e.what();
        }
        return "<no error>";
    };
    CHECK_THAT(error_of(R"({"model_type": "qwen2", "hidden_size": 64})"),
               Catch::Contains("some/dir/config.json") && Catch::Contains("qwen2"));
    CHECK_THAT(error_of(R"({"model_type": "clip"})"), Catch::Contains("vision_config"));
    CHECK_THAT(error_of(R"({"model_type": "clip_vision_model", "hidden_act": "relu"})"), Catch::Contains("relu"));
    CHECK_THAT(error_of(R"({"model_type": "clip_vision_model", "hidden_size": 100, "num_attention_heads": 16})"),
               Catch::Contains("divisible"));
    CHECK_THAT(error_of("{not json"), Catch::Contains("not valid JSON"));
}

TEST_CASE("vision: input checks and select-layer range", "[vision]") {
    Fixture f = load_fixture("clip_vision");
    torch::NoGradGuard ng;
    CHECK_THROWS_WITH(f.tower->features(torch::zeros({1, 3, 40, 40})), Catch::Contains("expected pixels"));
    CHECK_THROWS_WITH(f.tower->hidden_states(f.inputs.at("pixel_values"), 3), Catch::Contains("out of range"));
    CHECK_THROWS_WITH(f.tower->hidden_states(f.inputs.at("pixel_values"), -4), Catch::Contains("out of range"));
    CHECK_THROWS_WITH(f.tower->features(f.inputs.at("pixel_values"), -2, "cls"), Catch::Contains("select_feature"));
    CHECK(f.tower->hidden_states(f.inputs.at("pixel_values"), 0).size() == 1);
    CHECK(f.tower->num_image_tokens("cls_patch") == 10);
    CHECK(f.tower->hidden_size() == 64);
    CHECK(f.tower->image_size() == 42);
}

TEST_CASE("vision: vision_forward_dump writes every fixture tensor under the fixture's names", "[vision]") {
    for (const char * name : {"clip_vision", "siglip_vision"}) {
        Fixture f = load_fixture(name);
        const std::vector<std::string> grads = {"vision_model.embeddings.patch_embedding.weight",
                                                "vision_model.encoder.layers.0.mlp.fc1.weight",
                                                "vision_model.encoder.layers.1.mlp.fc2.weight"};
        for (auto & p : f.tower->parameters()) p.set_requires_grad(false);  // as build_vision_tower leaves it
        auto dump = model::vision_forward_dump(f.tower, f.inputs.at("pixel_values"), grads);
        for (const auto & [key, ref] : f.outputs) {
            if (key == "pooler_output") continue;  // the pooled CLS / attention-pooling head is not built
            INFO(name << ": " << key);
            REQUIRE(dump.count(key));
            CHECK(close_to_ref(dump.at(key), ref, std::string(name) + " dump " + key));
        }
        // The last layer does not reach hidden_states[-2]: zero gradient, and parameters stay as they were.
        CHECK(dump.at("grad.vision_model.encoder.layers.1.mlp.fc2.weight").abs().max().item<double>() == 0.0);
        for (const auto & p : f.tower->parameters()) CHECK_FALSE(p.requires_grad());
        CHECK_THROWS_WITH(model::vision_forward_dump(f.tower, f.inputs.at("pixel_values"), {"nope"}),
                          Catch::Contains("nope"));
    }
}

TEST_CASE("vision: idamoe-forward on the vision fixtures writes the reference tensors", "[vision][cli]") {
    const std::string bin = idamoe::test::binary_path("idamoe-forward");
    REQUIRE(std::filesystem::exists(bin));
    TempDir d;
    auto run = [&](const std::string & args) {
        const int rc = std::system((bin + " " + args + " 2> " + d.str("err.txt")).c_str());
        std::ifstream in(d.str("err.txt"));
        std::stringstream ss;
        ss << in.rdbuf();
        return std::make_pair(WIFEXITED(rc) ? WEXITSTATUS(rc) : -1, ss.str());
    };
    for (const char * name : {"clip_vision", "siglip_vision"}) {
        const std::string dir = fixture_path(std::string("hf/") + name);
        const std::string out = d.str(std::string(name) + ".safetensors");
        auto [rc, err] = run("--model " + dir + " --inputs " + dir + "/inputs.safetensors --out " + out +
                             " --grad vision_model.embeddings.patch_embedding.weight"
                             " --grad vision_model.encoder.layers.0.mlp.fc1.weight");
        INFO(err);
        REQUIRE(rc == 0);
        io::TensorMap got = io::load_safetensors(out);
        io::TensorMap ref = io::load_safetensors(dir + "/outputs.safetensors");
        for (const auto & [key, r] : ref) {
            if (key == "pooler_output") continue;  // pooling heads are not built (LLaVA never uses them)
            INFO(key);
            REQUIRE(got.count(key));
            CHECK(close_to_ref(got.at(key), r, std::string("cli ") + name + " " + key));
        }
    }
    const std::string clip = fixture_path("hf/clip_vision");
    auto [rc1, e1] = run("--model " + clip + " --inputs " + clip + "/inputs.safetensors --out " + d.str("o") +
                         " --grad vision_model.nope");
    CHECK(rc1 == 1);
    CHECK_THAT(e1, Catch::Contains("vision_model.nope"));
    CHECK_FALSE(std::filesystem::exists(d.str("o")));
    auto [rc2, e2] = run("--model " + clip + " --inputs " + fixture_path("hf/siglip_vision/inputs.safetensors") +
                         " --out " + d.str("o"));
    CHECK(rc2 == 1);
    CHECK_THAT(e2, Catch::Contains("expected pixels [B, 3, 42, 42]"));
}
