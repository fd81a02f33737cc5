// Tests of the optimizer-step loop on a toy language model: loss decrease, bit-exact resume, grad
// accumulation equivalence, non-finite skipping/stopping, signal stop, config mismatch on resume.
#include "train/guard.h"
#include "train/loop.h"

#include "test_utils.h"

#include <catch2/catch.hpp>

#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

using namespace idamoe;
using namespace idamoe::train;
namespace fs = std::filesystem;

namespace {
constexpr int64_t kV = 16, kT = 8, kD = 12;

struct ToyLMImpl : torch::nn::Module {
    torch::nn::Embedding embed_tokens{nullptr};
    torch::nn::Linear proj{nullptr}, lm_head{nullptr};
    double dropout;
    explicit ToyLMImpl(double p) : dropout(p) {
        embed_tokens = register_module("embed_tokens", torch::nn::Embedding(kV, kD));
        proj = register_module("proj", torch::nn::Linear(kD, kD));
        lm_head = register_module("lm_head", torch::nn::Linear(torch::nn::LinearOptions(kD, kV).bias(false)));
    }
};
TORCH_MODULE(ToyLM);

// Sample s: x_t = (s + t*(1 + s%3)) % V; the last s%3 targets are ignored (varying target counts).
class ToyTask : public TrainTask {
public:
    ToyLM model{nullptr};
    int64_t batch, dataset;
    int64_t position = 0, forwards = 0;
    std::set<int64_t> nan_at_forward;   // forward call indices whose loss becomes NaN
    int64_t stop_at_forward = -1;       // request_stop() inside this forward call
    std::vector<std::pair<torch::Tensor, torch::Tensor>> slots;

    ToyTask(int64_t batch_, int64_t dataset_, double dropout = 0.1, int64_t seed = 0) : batch(batch_), dataset(dataset_) {
        torch::manual_seed(seed);
        model = ToyLM(dropout);
        model->train();
    }
    int64_t load_micro_batch(int64_t i) override {
        if (static_cast<int64_t>(slots.size()) <= i) slots.resize(i + 1);
        auto x = torch::empty({batch, kT}, torch::kInt64), y = torch::empty({batch, kT}, torch::kInt64);
        for (int64_t b = 0; b < batch; ++b, ++position) {
            const int64_t s = position % dataset;
            for (int64_t t = 0; t < kT; ++t) {
                x[b][t] = (s + t * (1 + s % 3)) % kV;
                y[b][t] = t >= kT - s % 3 ? -100 : (s + (t + 1) * (1 + s % 3)) % kV;
            }
        }
        slots[i] = {x, y};
        return (y != -100).sum().item<int64_t>();
    }
    MicroBatchResult forward(int64_t i) override {
        auto [x, y] = slots[i];
        auto h = model->embed_tokens(x);
        h = torch::dropout(h, model->dropout, model->is_training());
        h = torch::tanh(model->proj(h)) + h;
        auto logits = model->lm_head(h);
        MicroBatchResult r;
        r.ce_sum = torch::nn::functional::cross_entropy(logits.reshape({-1, kV}), y.reshape({-1}),
                                                        torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kSum).ignore_index(-100));
        if (nan_at_forward.count(forwards)) r.ce_sum = r.ce_sum * std::nan("");
        if (forwards == stop_at_forward) request_stop();
        ++forwards;
        auto aux = model->proj->weight.pow(2).mean();
        r.aux_loss = 1e-3 * aux;
        r.parts["aux"] = aux.item<double>();
        r.counts_E[0] = torch::tensor({3.f, 1.f});
        r.n_tokens = x.numel();
        r.shape.seq_lens = std::vector<int64_t>(batch, kT);
        return r;
    }
    double epoch() const override { return static_cast<double>(position) / static_cast<double>(dataset); }
    nlohmann::json data_state() const override { return {{"position", position}}; }
    void restore_data_state(const nlohmann::json & s) override { position = s.at("position").get<int64_t>(); }
    std::vector<std::pair<std::string, torch::Tensor>> named_parameters() override {
        std::vector<std::pair<std::string, torch::Tensor>> out;
        for (auto & p : model->named_parameters()) out.emplace_back(p.key(), p.value());
        return out;
    }
};

core::Config toy_config(const std::string & out, int64_t steps) {
    core::Config c;
    c.train.output_dir = out;
    c.train.max_steps = steps;
    c.train.lr = 1e-2;
    c.train.warmup_ratio = 0.1;
    c.train.log_every = 1;
    c.train.save_every = 0;
    c.train.grad_clip = 1.0;
    c.data.batch_size = 4;
    c.data.grad_accum = 2;
    c.logging.progress_bar = false;
    return c;
}

// One micro-batch per step, stop after one non-finite step in a row, a checkpoint every save_every steps.
core::Config nonfinite_config(const std::string & out, int64_t steps, int64_t save_every) {
    core::Config c = toy_config(out, steps);
    c.data.grad_accum = 1;
    c.train.max_nonfinite_in_row = 1;
    c.train.save_every = save_every;
    return c;
}

std::string ckpt(const std::string & out, int64_t step) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "checkpoint-%08lld", static_cast<long long>(step));
    return (fs::path(out) / buf).string();
}
}  // namespace

TEST_CASE("loop: loss falls at least 5x on a fixed batch", "[train]") {
    test::TempDir dir;
    auto cfg = toy_config(dir.str(), 150);
    cfg.train.lr = 3e-2;
    cfg.train.warmup_ratio = 0.0;
    cfg.train.min_lr_ratio = 1.0;  // constant lr
    cfg.data.grad_accum = 1;
    ToyTask task(4, 4, 0.0);
    LoopOptions opt;
    opt.total_steps = 150;
    auto res = run_training(task, cfg, opt);
    INFO("first " << res.losses.front() << " last " << res.losses.back());
    CHECK(res.losses.front() / res.losses.back() >= 5.0);
    CHECK(res.stop_reason == "done");
    CHECK(io::verify_checkpoint(ckpt(dir.str(), 150)).empty());
    // One JSONL record per step (log_every 1) with the loss parts and routing stats.
    std::ifstream in(dir.str("metrics.jsonl"));
    std::string line, last;
    int n = 0;
    while (std::getline(in, line)) { ++n; last = line; }
    CHECK(n == 150);
    auto j = nlohmann::json::parse(last);
    CHECK(j["step"] == 150);
    CHECK(j.contains("loss_ce"));
    CHECK(j.contains("loss_aux"));
    CHECK(j["cv_mean"].get<double>() > 0);
}

TEST_CASE("loop: stop_after N/2 + resume auto replays a straight run bit for bit", "[train]") {
    test::TempDir a, b;
    const int64_t N = 8;
    ToyTask straight(4, 64);
    LoopOptions opt;
    opt.total_steps = N;
    auto ra = run_training(straight, toy_config(a.str(), N), opt);
    REQUIRE(ra.losses.size() == N);

    auto cfg_b = toy_config(b.str(), N);
    cfg_b.train.stop_after = N / 2;
    ToyTask first(4, 64);
    auto rb1 = run_training(first, cfg_b, opt);
    CHECK(rb1.stop_reason == "stop_after");
    CHECK(rb1.end_step == N / 2);
    // A fresh process: different init seed and RNG state, everything must come from the checkpoint.
    torch::manual_seed(999);
    ToyTask second(4, 64, 0.1, /*seed=*/7);
    cfg_b.train.stop_after = 0;
    LoopOptions resume = opt;
    resume.resume = "auto";
    auto rb2 = run_training(second, cfg_b, resume);
    CHECK(rb2.start_step == N / 2);
    std::vector<double> joined = rb1.losses;
    joined.insert(joined.end(), rb2.losses.begin(), rb2.losses.end());
    REQUIRE(joined.size() == ra.losses.size());
    for (size_t i = 0; i < joined.size(); ++i) {
        INFO("step " << i);
        CHECK(joined[i] == ra.losses[i]);  // exact
    }
    CHECK(test::read_file(ckpt(a.str(), N) + "/model.safetensors") == test::read_file(ckpt(b.str(), N) + "/model.safetensors"));
    CHECK(test::read_file(ckpt(a.str(), N) + "/optimizer.safetensors") == test::read_file(ckpt(b.str(), N) + "/optimizer.safetensors"));
}

TEST_CASE("loop: resuming with an incompatible config names the differing keys", "[train]") {
    test::TempDir dir;
    auto cfg = toy_config(dir.str(), 4);
    cfg.train.stop_after = 2;
    ToyTask t1(4, 64);
    LoopOptions opt;
    opt.total_steps = 4;
    run_training(t1, cfg, opt);
    cfg.train.lr = 5e-3;
    cfg.data.batch_size = 8;
    cfg.train.stop_after = 0;  // run control may change
    ToyTask t2(4, 64);
    opt.resume = "auto";
    CHECK_THROWS_WITH(run_training(t2, cfg, opt), Catch::Contains("train.lr: checkpoint 0.01, now 0.005") &&
                                                      Catch::Contains("data.batch_size: checkpoint 4, now 8") &&
                                                      !Catch::Contains("stop_after"));
}

namespace {
std::string hex_of(const torch::Tensor & u8) {
    std::string out;
    char buf[3];
    for (int64_t i = 0; i < u8.numel(); ++i) {
        std::snprintf(buf, sizeof buf, "%02x", u8.data_ptr<uint8_t>()[i]);
        out += buf;
    }
    return out;
}
}  // namespace

// In one process, with DistHooks standing in for a 2-rank job: rank 1's state differs from rank 0's here
// (position and RNG stream), which the real 2-rank test (test_train_dist.cpp) cannot show because its
// ranks' positions and RNG streams happen to be equal.
TEST_CASE("loop: every rank's sampler and RNG state is saved, each rank resumes its own, another world size is refused", "[train]") {
    test::TempDir dir;
    torch::manual_seed(4242);
    const std::string rank1_rng = hex_of(io::capture_rng_state().at("cpu"));
    auto cfg = toy_config(dir.str(), 2);
    ToyTask t0(4, 64);
    LoopOptions opt;
    opt.total_steps = 2;
    opt.dist.world_size = 2;
    opt.dist.rank = 0;
    opt.dist.gather = [&](const std::string & mine) {
        nlohmann::json other = nlohmann::json::parse(mine);
        other["sampler"]["position"] = 1000;
        other["rng"]["cpu"] = rank1_rng;
        return std::vector<std::string>{mine, other.dump()};
    };
    run_training(t0, cfg, opt);
    const io::CheckpointData ck = io::load_checkpoint(ckpt(dir.str(), 2));
    CHECK(ck.trainer_state.at("world_size") == 2);
    CHECK(ck.trainer_state.at("samplers")[0].at("position") == 16);
    CHECK(ck.trainer_state.at("samplers")[1].at("position") == 1000);
    CHECK(hex_of(ck.rng.at("rank1/cpu")) == rank1_rng);
    CHECK(hex_of(ck.rng.at("rank0/cpu")) != rank1_rng);

    // Rank 1 resumes (no steps left, so its final save hands over exactly what it restored).
    ToyTask t1(4, 64);
    LoopOptions r1 = opt;
    r1.dist.rank = 1;
    r1.resume = "auto";
    std::string restored;
    r1.dist.gather = [&](const std::string & mine) {
        restored = mine;
        return std::vector<std::string>{mine, mine};
    };
    run_training(t1, cfg, r1);
    REQUIRE_FALSE(restored.empty());
    const auto j = nlohmann::json::parse(restored);
    CHECK(j.at("sampler").at("position") == 1000);
    CHECK(j.at("rng").at("cpu") == rank1_rng);

    for (int world : {1, 3}) {
        ToyTask t(4, 64);
        LoopOptions o = opt;
        o.dist.world_size = world;
        o.dist.rank = 0;
        o.resume = "auto";
        CHECK_THROWS_WITH(run_training(t, cfg, o), Catch::Contains("it was written by a run with 2") &&
                                                       Catch::Contains("cannot be remapped"));
    }
}

TEST_CASE("loop: grad accumulation equals one big batch (token-mean loss)", "[train]") {
    test::TempDir a, b;
    auto ca = toy_config(a.str(), 3), cb = toy_config(b.str(), 3);
    ca.data.grad_accum = 1;
    cb.data.grad_accum = 2;
    ToyTask big(8, 64, 0.0), small(4, 64, 0.0);
    LoopOptions opt;
    opt.total_steps = 3;
    auto ra = run_training(big, ca, opt);
    auto rb = run_training(small, cb, opt);
    for (size_t i = 0; i < 3; ++i) CHECK(rb.losses[i] == Approx(ra.losses[i]).epsilon(1e-5));
    auto pa = big.named_parameters(), pb = small.named_parameters();
    for (size_t i = 0; i < pa.size(); ++i) {
        const double err = (pa[i].second - pb[i].second).abs().max().item<double>();
        INFO(pa[i].first << " max abs err " << err);
        CHECK(err < 1e-5);
    }
}

TEST_CASE("loop: a non-finite step is skipped, too many in a row stop with the checkpoint intact", "[train]") {
    test::TempDir dir;
    auto cfg = nonfinite_config(dir.str(), 6, 2);
    ToyTask task(4, 64, 0.0);
    task.nan_at_forward = {2};
    LoopOptions opt;
    opt.total_steps = 6;
    auto res = run_training(task, cfg, opt);
    CHECK(res.losses.size() == 6);
    CHECK(std::isnan(res.losses[2]));
    CHECK(std::isfinite(res.losses[5]));

    test::TempDir dir2;
    auto cfg2 = nonfinite_config(dir2.str(), 6, 2);
    ToyTask bad(4, 64, 0.0);
    bad.nan_at_forward = {3, 4};
    CHECK_THROWS_WITH(run_training(bad, cfg2, opt), Catch::Contains("2 optimizer steps in a row") &&
                                                        Catch::Contains(ckpt(dir2.str(), 4)));
    // Steps 3 (NaN, skipped: weights unchanged) and 4 were saved before the second NaN; nothing after.
    CHECK(io::resolve_resume(dir2.str(), "auto") == ckpt(dir2.str(), 4));
}

TEST_CASE("loop: a stop signal ends the run at the step boundary with a checkpoint", "[train]") {
    test::TempDir dir;
    clear_stop();
    auto cfg = toy_config(dir.str(), 10);
    cfg.data.grad_accum = 1;
    ToyTask task(4, 64);
    task.stop_at_forward = 2;  // "SIGTERM" arrives during step 3's forward
    LoopOptions opt;
    opt.total_steps = 10;
    auto res = run_training(task, cfg, opt);
    clear_stop();
    CHECK(res.stop_reason == "signal");
    CHECK(res.end_step == 3);
    CHECK(res.last_checkpoint == ckpt(dir.str(), 3));
    CHECK(io::verify_checkpoint(res.last_checkpoint).empty());
}

// Complements the test above (which covers skip, stop message and the intact checkpoint): what a
// skipped step leaves behind on disk and in the metrics JSONL.
TEST_CASE("loop: a skipped non-finite step changes no weight or optimizer state and is counted in the JSONL", "[train]") {
    test::TempDir dir;
    auto cfg = nonfinite_config(dir.str(), 5, 1);
    cfg.checkpoint.keep_last = 10;
    cfg.logging.jsonl = "metrics.jsonl";
    ToyTask task(4, 64, 0.0);
    task.nan_at_forward = {2};  // step 3
    LoopOptions opt;
    opt.total_steps = 5;
    auto res = run_training(task, cfg, opt);
    REQUIRE(res.losses.size() == 5);
    // Checkpoints after steps 2 and 3 hold the same weights and AdamW state (moments and step counts).
    auto same = [&](int64_t s1, int64_t s2, const char * file) {
        const std::string a = test::read_file(ckpt(dir.str(), s1) + file), b = test::read_file(ckpt(dir.str(), s2) + file);
        INFO(file << " of steps " << s1 << " and " << s2 << ": " << a.size() << " and " << b.size() << " bytes");
        REQUIRE(!a.empty());
        return a == b;
    };
    CHECK(same(2, 3, "/model.safetensors"));
    CHECK(same(2, 3, "/optimizer.safetensors"));
    CHECK(!same(3, 4, "/model.safetensors"));
    CHECK(io::load_checkpoint(ckpt(dir.str(), 3)).trainer_state["nonfinite"]["total"] == 1);
    std::vector<nlohmann::json> recs;
    std::ifstream in(dir.str("metrics.jsonl"));
    for (std::string line; std::getline(in, line);) recs.push_back(nlohmann::json::parse(line));
    REQUIRE(recs.size() == 5);
    CHECK(recs[1]["skipped_nonfinite"] == 0);
    CHECK(recs[2]["step"] == 3);
    CHECK(recs[2]["loss"].is_null());  // NaN has no JSON form
    CHECK(recs[2]["skipped_nonfinite"] == 1);
    CHECK(recs[4]["skipped_nonfinite"] == 1);

    // Too many in a row: the JSONL ends with a stopped_nonfinite event naming the intact checkpoint.
    test::TempDir dir2;
    auto cfg2 = cfg;
    cfg2.train.output_dir = dir2.str();
    ToyTask bad(4, 64, 0.0);
    bad.nan_at_forward = {1, 2};
    CHECK_THROWS_AS(run_training(bad, cfg2, opt), TrainingStopped);
    std::ifstream in2(dir2.str("metrics.jsonl"));
    std::string line, last;
    while (std::getline(in2, line)) last = line;
    auto ev = nlohmann::json::parse(last);
    CHECK(ev["event"] == "stopped_nonfinite");
    CHECK(ev["step"] == 2);
    CHECK_THAT(ev["message"].get<std::string>(), Catch::Contains("2 optimizer steps in a row") && Catch::Contains(ckpt(dir2.str(), 2)));
    CHECK(io::resolve_resume(dir2.str(), "auto") == ckpt(dir2.str(), 2));  // after the first (skipped) NaN step
}
