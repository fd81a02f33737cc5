// Tests: stage rules by parameter name, FLOP model, routing metrics, JSONL/console records.
#include "train/flops.h"
#include "train/metrics.h"
#include "train/stages.h"

#include "test_utils.h"

#include <catch2/catch.hpp>

#include <fstream>
#include <sstream>
#include <filesystem>
namespace fs = std::filesystem;

using namespace idamoe::train;

namespace {
// A module tree whose parameters carry the given dotted HF names.
struct Node : torch::nn::Module {
    std::map<std::string, std::shared_ptr<Node>> kids;
    void add(const std::string & path, std::vector<int64_t> shape) {
        const auto dot = path.find('.');
        if (dot == std::string::npos) {
            register_parameter(path, torch::zeros(shape));
            return;
        }
        const std::string head = path.substr(0, dot);
        if (!kids.count(head)) kids[head] = register_module(head, std::make_shared<Node>());
        kids[head]->add(path.substr(dot + 1), shape);
    }
};

std::shared_ptr<Node> tiny_llava(bool moe) {
    auto m = std::make_shared<Node>();
    m->add("model.vision_tower.vision_tower.vision_model.encoder.layers.0.mlp.fc1.weight", {8, 4});
    m->add("model.vision_tower.vision_tower.vision_model.post_layernorm.weight", {4});
    m->add("model.mm_projector.0.weight", {6, 4});
    m->add("model.mm_projector.0.bias", {6});
    m->add("model.embed_tokens.weight", {10, 6});
    for (int l = 0; l < 2; ++l) {
        const std::string p = "model.layers." + std::to_string(l) + ".";
        m->add(p + "self_attn.q_proj.weight", {6, 6});
        m->add(p + "input_layernorm.weight", {6});
        m->add(p + "post_attention_layernorm.weight", {6});
        if (moe && l == 0) {
            m->add(p + "mlp.experts.0.gate_proj.weight", {3, 6});
            m->add(p + "mlp.experts.1.gate_proj.weight", {3, 6});
            m->add(p + "mlp.router.means", {8, 2});
        } else {
            m->add(p + "mlp.gate_proj.weight", {3, 6});
            m->add(p + "mlp.down_proj.weight", {6, 3});
        }
    }
    m->add("model.norm.weight", {6});
    m->add("lm_head.weight", {10, 6});
    return m;
}

std::set<std::string> trainable(torch::nn::Module & m) {
    std::set<std::string> out;
    for (auto & p : m.named_parameters()) if (p.value().requires_grad()) out.insert(p.key());
    return out;
}
}  // namespace

TEST_CASE("train: parameter kinds come from HF names", "[train]") {
    CHECK(classify_param("model.vision_tower.vision_tower.vision_model.encoder.layers.0.mlp.fc1.weight") == ParamKind::vision);
    CHECK(classify_param("model.mm_projector.image_spatial_proj.2.bias") == ParamKind::projector);
    CHECK(classify_param("model.layers.3.mlp.gate_proj.weight") == ParamKind::ffn);
    CHECK(classify_param("transformer.h.3.mlp.c_proj.weight") == ParamKind::ffn);
    CHECK(classify_param("model.layers.2.mlp.deepspeed_moe.experts.deepspeed_experts.1.up_proj.weight") == ParamKind::expert);
    CHECK(classify_param("model.layers.2.mlp.deepspeed_moe.gate.wg.weight") == ParamKind::router);
    CHECK(classify_param("model.layers.2.mlp.router.mix_logits") == ParamKind::router);
    CHECK(classify_param("model.layers.2.self_attn.o_proj.weight") == ParamKind::attention);
    CHECK(classify_param("model.layers.2.input_layernorm.weight") == ParamKind::norm);
    CHECK(classify_param("model.embed_tokens.weight") == ParamKind::embed);
    CHECK(classify_param("lm_head.weight") == ParamKind::lm_head);
}

TEST_CASE("train: each stage trains exactly its parameter set", "[train]") {
    auto m = tiny_llava(false);
    auto s1 = apply_stage_rules(*m, 1);
    CHECK(trainable(*m) == std::set<std::string>{"model.mm_projector.0.weight", "model.mm_projector.0.bias"});
    CHECK(s1.trainable == 30);
    CHECK(s1.by_kind.at("projector").trainable == 30);
    CHECK_THAT(s1.to_string(), Catch::Contains("projector"));

    apply_stage_rules(*m, 2);
    for (auto & p : m->named_parameters())
        CHECK(p.value().requires_grad() == (p.key().find("vision_tower") == std::string::npos));

    auto moe = tiny_llava(true);
    apply_stage_rules(*moe, 3);
    CHECK(trainable(*moe) == std::set<std::string>{
                                 "model.mm_projector.0.weight", "model.mm_projector.0.bias",
                                 "model.layers.0.mlp.experts.0.gate_proj.weight", "model.layers.0.mlp.experts.1.gate_proj.weight",
                                 "model.layers.0.mlp.router.means", "model.layers.1.mlp.gate_proj.weight",
                                 "model.layers.1.mlp.down_proj.weight"});
}

TEST_CASE("train: train.trainable overrides the stage and rejects patterns that match nothing", "[train]") {
    auto m = tiny_llava(true);
    apply_stage_rules(*m, 3, {"router.means"});
    CHECK(trainable(*m) == std::set<std::string>{"model.layers.0.mlp.router.means"});
    CHECK_THROWS_WITH(apply_stage_rules(*m, 3, {"means", "mix_logitz"}), Catch::Contains("mix_logitz"));
    // the tower is never a trainable parameter, even when a pattern names it; the error says so
    apply_stage_rules(*m, 2, {"model."});
    for (auto & p : m->named_parameters())
        CHECK(p.value().requires_grad() == (p.key().rfind("model.", 0) == 0 && p.key().find("vision_tower") == std::string::npos));
    CHECK_THROWS_WITH(apply_stage_rules(*m, 2, {"layers.", "vision_tower"}), Catch::Contains("vision tower is frozen"));
    CHECK_THROWS_WITH(apply_stage_rules(*m, 4), Catch::Contains("1, 2 or 3"));
}

TEST_CASE("train: FLOP model follows the 6N / 4N / 2N and attention conventions", "[train]") {
    DecoderShape dec{2, 8, 16, 32, 2, 1, 4};  // L=2, d=8, d_ff=16, V=32, 2 q heads, 1 kv head, hd 4
    const double attn_w = 8 * 8 + 8 * 4 * 2 + 8 * 8;  // q, k, v, o
    const double ffn_w = 3 * 8 * 16;
    const double head = 8 * 32;
    const double N = 2 * (attn_w + ffn_w) + head;
    StepShape s{{5, 3}, 0, 0};
    const double tokens = 8, sum_t2 = 25 + 9;

    TrainableParts all{false, true, true, true, true, true, true};
    FlopModel full(dec, MoeShape{}, VisionShape{}, all);
    CHECK(full.active_params_per_token() == static_cast<int64_t>(N));
    CHECK(full.decoder_flops(s) == Approx(6 * N * tokens + 12 * 2 * 8 * sum_t2));

    // Stage 1 (projector only, image tokens present): the LLM passes gradients, 4N, attention still 12.
    TrainableParts s1{false, true, false, false, false, false, false};
    StepShape si{{5, 3}, 1, 2};
    FlopModel f1(dec, MoeShape{}, VisionShape{}, s1);
    CHECK(f1.decoder_flops(si) == Approx(4 * N * tokens + 12 * 2 * 8 * sum_t2));
    // Nothing trains: forward only.
    FlopModel f0(dec, MoeShape{}, VisionShape{}, TrainableParts{});
    CHECK(f0.decoder_flops(s) == Approx(2 * N * tokens + 4 * 2 * 8 * sum_t2));

    // MoE on layer 0 with top-2 of any number of experts: active = 2 copies of the FFN + router.
    MoeShape moe{{0}, 2, 0, 8 * 4, 0};
    FlopModel fm(dec, moe, VisionShape{}, all);
    CHECK(fm.active_params_per_token() == static_cast<int64_t>(N + ffn_w + 8 * 4));

    // Vision tower, frozen: forward only, per image (§4.2), plus the projector on image tokens.
    VisionShape vis{true, 1, 4, 8, 2, 3, 4, true, 10};
    FlopModel fv(dec, MoeShape{}, vis, s1);
    const double T = 5, n_blocks = 1 * (4 * 16 + 2 * 4 * 8);
    const double tower = 2 * n_blocks * T + 4 * 1 * T * T * 4 + 2 * 3 * 2 * 2 * 4 * 4;
    CHECK(fv.vision_flops(StepShape{{}, 2, 8}) == Approx(2 * tower + 4 * 10 * 8));

    CHECK(peak_flops_for_device("NVIDIA H100 80GB HBM3") == 989e12);
    CHECK(peak_flops_for_device("cpu") == 0.0);
}

TEST_CASE("train: routing metrics (CV, entropy, load) and JSONL records", "[train]") {
    CHECK(coefficient_of_variation({1, 1, 1, 1}) == Approx(0.0));
    CHECK(coefficient_of_variation({4, 0, 0, 0}) == Approx(2.0).epsilon(1e-6));  // unbiased std 2, mean 1
    auto r = routing_stats({{0, torch::tensor({4.f, 0.f, 0.f, 0.f})}, {2, torch::tensor({1.f, 1.f, 1.f, 1.f})}},
                           {{0, torch::tensor(0.5)}, {2, torch::tensor(1.5)}});
    CHECK(r.cv_mean == Approx(1.0).epsilon(1e-6));
    CHECK(r.entropy_mean == Approx(1.0));
    CHECK(r.load.at(0) == std::vector<double>{1, 0, 0, 0});

    idamoe::test::TempDir dir;
    StepRecord rec;
    rec.step = 10; rec.total_steps = 100; rec.loss = 2.5; rec.parts = {{"ce", 2.4}, {"ae", 0.1}};
    rec.lr = 1e-4; rec.grad_norm = 0.7; rec.step_ms = 500; rec.flops_per_step = 1e12; rec.tokens_per_s = 1000;
    rec.routing = r;
    {
        MetricsLogger log(dir.str("sub/metrics.jsonl"));
        log.log(rec, false);
        rec.peak_flops = 4e12;
        log.log(rec, false);
    }
    std::ifstream in(dir.str("sub/metrics.jsonl"));
    std::string l1, l2;
    std::getline(in, l1);
    std::getline(in, l2);
    auto j1 = nlohmann::json::parse(l1), j2 = nlohmann::json::parse(l2);
    CHECK(j1["step"] == 10);
    CHECK(j1["loss_ce"] == 2.4);
    CHECK(j1["achieved_gflops"].get<double>() == Approx(2000.0));
    CHECK(!j1.contains("mfu"));
    CHECK(j2["mfu"].get<double>() == Approx(0.5));
    CHECK(j2["expert_load"]["0"][0] == 1.0);
    CHECK(j2["cv_mean"].get<double>() == Approx(1.0).epsilon(1e-6));
    rec.peak_flops = 0;
    CHECK_THAT(rec.console_line(), Catch::Contains("GFLOP/s") && Catch::Contains("CV 1.000"));
    rec.peak_flops = 4e12;
    CHECK_THAT(rec.console_line(), Catch::Contains("MFU 50.0%"));
    CHECK(ProgressBar::format_eta(3725) == "1:02:05");
    CHECK(ProgressBar::format_eta(65) == "01:05");
}

#include "io/checkpoint.h"
#include "train/export.h"

TEST_CASE("train: HF export writes shards + index, config and tokenizer files, init_from resolves it", "[train]") {
    idamoe::test::TempDir dir;
    idamoe::test::write_text(dir.str("base/tokenizer.json"), "{\"tok\": 1}");
    idamoe::io::TensorMap w;
    torch::manual_seed(0);
    w["model.embed_tokens.weight"] = torch::randn({64, 8});
    w["model.layers.0.mlp.experts.0.up_proj.weight"] = torch::randn({16, 8});
    w["lm_head.weight"] = torch::randn({64, 8});
    nlohmann::json cfg = {{"model_type", "qwen2"}, {"idamoe", {{"stage", 3}}}};
    const std::string out = export_hf_dir(dir.str("run/hf"), w, cfg, dir.str("base"), /*shard_bytes=*/2100);
    CHECK(fs::exists(out + "/tokenizer.json"));
    CHECK(!fs::exists(dir.str("run/hf.tmp")));
    auto index = nlohmann::json::parse(std::ifstream(out + "/model.safetensors.index.json"));
    CHECK(index["weight_map"].size() == 3);
    CHECK(index["weight_map"]["lm_head.weight"] == "model-00001-of-00003.safetensors");
    CHECK(nlohmann::json::parse(std::ifstream(out + "/config.json"))["idamoe"]["stage"] == 3);
    CHECK(resolve_init_dir(dir.str("run")) == out);
    CHECK(resolve_init_dir(out) == out);
    CHECK_THROWS_WITH(resolve_init_dir(dir.str("base")), Catch::Contains("did the previous stage finish"));
    // One shard when everything fits.
    const std::string one = export_hf_dir(dir.str("run2/hf"), w, cfg, "");
    CHECK(fs::exists(one + "/model.safetensors"));
    CHECK(!fs::exists(one + "/model.safetensors.index.json"));
}
