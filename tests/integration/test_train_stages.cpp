// Integration tests of the three stages on the tiny fixtures (tests/fixtures/hf/qwen2 + clip_vision):
// exactly the intended parameters change per stage, stage 3 starts equal to the stage-2 dense model,
// loss falls >= 5x on a fixed batch, bit-exact resume per stage, and wrong init_from is explained.
#include "io/checkpoint.h"
#include "io/safetensors.h"
#include "train/loop.h"
#include "train/trainer.h"

#include "test_utils.h"

#include <catch2/catch.hpp>

#include <ATen/CPUGeneratorImpl.h>

#include <filesystem>
#include <fstream>
#include <sstream>

using namespace idamoe;
namespace fs = std::filesystem;

namespace {
constexpr int64_t kImgTok = 9;   // clip_vision fixture: 42 px / 14 px patches = 3x3, CLS dropped
constexpr int64_t kText = 6;

// Deterministic batches from a position counter: `distinct` different batches, cycled.
class SyntheticSource : public train::BatchSource {
public:
    SyntheticSource(int64_t batch, int64_t distinct, uint64_t salt = 0, int64_t text = kText)
        : batch_(batch), distinct_(distinct), text_(text), salt_(salt) {}
    data::Batch next() override {
        const int64_t k = position_++ % distinct_;
        auto gen = at::detail::createCPUGenerator(1000 + 100 * salt_ + static_cast<uint64_t>(k));
        data::Batch b;
        const int64_t T = kImgTok + text_;
        b.input_ids = at::randint(3, 500, {batch_, T}, gen, torch::kInt64);
        b.input_ids.slice(1, 0, kImgTok).fill_(-200);
        b.attention_mask = torch::ones({batch_, T}, torch::kInt64);
        b.labels = b.input_ids.clone();
        b.labels.slice(1, 0, kImgTok).fill_(-100);
        b.images = at::randn({batch_, 3, 42, 42}, gen);
        b.n_target_tokens = (b.labels.slice(1, 1) != -100).sum().item<int64_t>();
        return b;
    }
    double epoch() const override { return static_cast<double>(position_) / static_cast<double>(distinct_); }
    nlohmann::json state() const override { return {{"position", position_}}; }
    void load_state(const nlohmann::json & s) override { position_ = s.at("position").get<int64_t>(); }
    int64_t num_samples() const override { return distinct_ * batch_; }

private:
    int64_t batch_, distinct_, text_, position_ = 0;
    uint64_t salt_;
};

core::Config stage_config(int64_t stage, const std::string & out, const std::string & init_from, int64_t steps, double lr) {
    core::Config c;
    c.model.llm_path = test::fixture_path("hf/qwen2");
    c.model.device = "cpu";
    c.vision.path = test::fixture_path("hf/clip_vision");
    c.moe.router = "ida";
    c.moe.latent_dim = 8;
    c.moe.centers_per_expert = 4;
    c.moe.ae_hidden = 16;
    c.train.stage = stage;
    c.train.init_from = init_from;
    c.train.output_dir = out;
    c.train.max_steps = steps;
    c.train.lr = lr;
    c.train.warmup_ratio = 0.0;
    c.train.min_lr_ratio = 1.0;
    c.train.log_every = 10;
    c.train.save_every = 0;
    c.train.grad_clip = 0.0;
    c.data.batch_size = 2;
    c.data.grad_accum = 1;
    c.logging.progress_bar = false;
    return c;
}

io::TensorMap export_weights(const std::string & out) { return io::load_checkpoint_dir(out + "/hf"); }

// Names whose tensors differ between a and b (over the names both hold).
std::set<std::string> changed(const io::TensorMap & a, const io::TensorMap & b) {
    std::set<std::string> out;
    for (auto & [k, v] : a)
        if (b.count(k) && !torch::equal(v, b.at(k))) out.insert(k);
    return out;
}

std::string file_bytes(const std::string & p) {
    std::ifstream in(p, std::ios::binary);
    std::ostringstream ss;
    ss << in.rdbuf();
    return ss.str();
}

void check_resume_exact(core::Config cfg, const std::string & name) {
    const int64_t N = 4;
    test::TempDir a, b;
    cfg.train.max_steps = N;
    cfg.train.output_dir = a.str();
    auto straight = train::run_stage(cfg, "", std::make_unique<SyntheticSource>(2, 3));
    cfg.train.output_dir = b.str();
    cfg.train.stop_after = N / 2;
    auto first = train::run_stage(cfg, "", std::make_unique<SyntheticSource>(2, 3));
    REQUIRE(first.stop_reason == "stop_after");
    CHECK(first.export_dir.empty());
    cfg.train.stop_after = 0;
    torch::manual_seed(12345);  // a new process would start from another RNG state
    auto second = train::run_stage(cfg, "auto", std::make_unique<SyntheticSource>(2, 3));
    std::vector<double> joined = first.losses;
    joined.insert(joined.end(), second.losses.begin(), second.losses.end());
    INFO(name);
    REQUIRE(joined.size() == straight.losses.size());
    for (size_t i = 0; i < joined.size(); ++i) CHECK(joined[i] == straight.losses[i]);
    CHECK(file_bytes(a.str("checkpoint-00000004/model.safetensors")) == file_bytes(b.str("checkpoint-00000004/model.safetensors")));
    CHECK(file_bytes(a.str("hf/model.safetensors")) == file_bytes(b.str("hf/model.safetensors")));
}
}  // namespace

TEST_CASE("stages: 1 -> 2 -> 3 on the tiny fixtures", "[train][integration]") {
    test::TempDir root;
    const std::string s1 = root.str("s1"), s2 = root.str("s2"), s3 = root.str("s3");
    const io::TensorMap base = io::load_checkpoint_dir(test::fixture_path("hf/qwen2"));

    // Stage 1: projector only, so like a caption: the image decides a short text. A fixed batch (one
    // distinct batch) must be fit >= 5x (with 6 random text tokens the frozen LLM plateaus near 4.5x).
    auto c1 = stage_config(1, s1, "", 400, 3e-2);
    auto r1 = train::run_stage(c1, "", std::make_unique<SyntheticSource>(2, 1, 0, /*text=*/2));
    INFO("stage 1 loss " << r1.losses.front() << " -> " << r1.losses.back());
    CHECK(r1.losses.front() / r1.losses.back() >= 5.0);
    REQUIRE(!r1.export_dir.empty());
    const io::TensorMap w1 = export_weights(s1);
    CHECK(changed(base, w1).empty());   // every LLM tensor is the fixture's
    CHECK(w1.count("model.mm_projector.0.weight"));
    CHECK(w1.count("model.mm_projector.2.bias"));

    // Stage 2: the whole LLM + projector + IDA router warm-up at layer 0 (every_other of 2 layers).
    auto c2 = stage_config(2, s2, s1, 60, 3e-3);
    auto r2 = train::run_stage(c2, "", std::make_unique<SyntheticSource>(2, 1));
    INFO("stage 2 loss " << r2.losses.front() << " -> " << r2.losses.back());
    CHECK(r2.losses.front() / r2.losses.back() >= 5.0);
    const io::TensorMap w2 = export_weights(s2);
    {
        train::StageModel m1 = train::load_stage_export(s1 + "/hf", c2);
        for (auto & p : m1.llava->named_parameters()) {
            INFO(p.key());
            CHECK(!torch::equal(w1.at(p.key()), w2.at(p.key())));  // every LLM and projector parameter trained
        }
    }
    bool has_router = false;
    for (auto & [k, v] : w2) has_router = has_router || k.rfind("model.layers.0.mlp.router.", 0) == 0;
    CHECK(has_router);

    // Stage 3 starts as the stage-2 dense model: upcycled experts equal the FFN, outputs equal.
    auto c3 = stage_config(3, s3, s2, 60, 3e-3);
    {
        torch::NoGradGuard no_grad;
        train::StageModel dense = train::load_stage_export(s2 + "/hf", c3);
        train::StageModel moe = train::build_stage_model(c3);
        REQUIRE(moe.moe_layers == std::vector<int64_t>{0});
        dense.llava->eval();
        moe.llava->eval();
        auto batch = SyntheticSource(2, 1).next();
        auto a = dense.llava->forward(batch.input_ids, batch.attention_mask, batch.images).logits_BTV;
        auto b = moe.llava->forward(batch.input_ids, batch.attention_mask, batch.images).logits_BTV;
        const double err = (a - b).abs().max().item<double>();
        INFO("stage-3 first forward vs stage-2 dense: max abs err " << err);
        CHECK(err < 1e-4);
        auto state = moe.llava->named_parameters();
        for (int e = 0; e < 4; ++e)
            CHECK(torch::equal(state["model.layers.0.mlp.experts." + std::to_string(e) + ".up_proj.weight"], w2.at("model.layers.0.mlp.up_proj.weight")));
    }
    // A batch stage 2 has not seen, so stage 3 has something left to fit.
    auto r3 = train::run_stage(c3, "", std::make_unique<SyntheticSource>(2, 1, /*salt=*/7));
    INFO("stage 3 loss " << r3.losses.front() << " -> " << r3.losses.back());
    CHECK(r3.losses.front() / r3.losses.back() >= 5.0);
    const io::TensorMap w3 = export_weights(s3);
    const auto diff = changed(w2, w3);
    for (auto & [k, v] : w2) {
        if (!w3.count(k)) continue;
        const bool trains = k.find(".mlp.") != std::string::npos || k.find("mm_projector") != std::string::npos;
        INFO(k);
        CHECK(diff.count(k) == (trains ? 1u : 0u));  // attention, embeddings, norms frozen
    }
    CHECK(!torch::equal(w3.at("model.layers.0.mlp.experts.0.up_proj.weight"), w3.at("model.layers.0.mlp.experts.1.up_proj.weight")));
    auto conf = nlohmann::json::parse(std::ifstream(s3 + "/hf/config.json"));
    CHECK(conf["idamoe"]["stage"] == 3);
    CHECK(conf["moe"]["num_experts"] == std::vector<int64_t>{4});
    // The export is loadable by a new run.
    train::StageModel again = train::load_stage_export(s3 + "/hf", c3);
    CHECK(again.moe_layers == std::vector<int64_t>{0});

    // Stage 3 pointed at a stage-1 output says which stage it needs.
    auto bad = stage_config(3, root.str("bad"), s1, 2, 1e-3);
    CHECK_THROWS_WITH(train::build_stage_model(bad), Catch::Contains("stage 3 starts from a stage-2 output") &&
                                                         Catch::Contains("holds a stage-1 output"));

    // Bit-exact resume for every stage.
    check_resume_exact(stage_config(1, "", "", 4, 1e-2), "stage 1");
    check_resume_exact(stage_config(2, "", s1, 4, 1e-3), "stage 2");
    check_resume_exact(stage_config(3, "", s2, 4, 1e-3), "stage 3");
}
