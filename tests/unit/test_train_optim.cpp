// Tests: AdamW parity with torch, state round trip, decay groups, clipping, LR schedule, loss
// normalisation under grad accumulation, non-finite guard, stop signals.
#include "train/guard.h"
#include "train/loss.h"
#include "train/optimizer.h"
#include "train/schedule.h"

#include <catch2/catch.hpp>

#include <limits>

#include <csignal>
#include <cmath>

using namespace idamoe::train;

namespace {
std::vector<std::pair<std::string, torch::Tensor>> make_params(int64_t seed) {
    torch::manual_seed(seed);
    return {{"model.layers.0.mlp.up_proj.weight", torch::randn({5, 4}).requires_grad_(true)},
            {"model.layers.0.mlp.up_proj.bias", torch::randn({5}).requires_grad_(true)},
            {"model.norm.weight", torch::randn({4}).requires_grad_(true)},
            {"model.layers.0.mlp.router.gmm.0.means", torch::randn({8, 3}).requires_grad_(true)},
            {"lm_head.weight", torch::randn({7, 4}).requires_grad_(true)}};
}
void fake_grads(const std::vector<std::pair<std::string, torch::Tensor>> & ps, int64_t step) {
    torch::manual_seed(1000 + step);
    for (auto & [n, p] : ps) p.mutable_grad() = torch::randn_like(p);
}
}  // namespace

TEST_CASE("train: decay groups follow the >=2-D / norm / GMM rule", "[train]") {
    auto ps = make_params(0);
    AdamW opt(ps, AdamWOptions{1e-3, 0.9, 0.999, 1e-8, 0.1});
    REQUIRE(opt.groups().size() == 2);
    CHECK(opt.groups()[0].names == std::vector<std::string>{"model.layers.0.mlp.up_proj.weight", "lm_head.weight"});
    CHECK(opt.groups()[0].weight_decay == 0.1);
    CHECK(opt.groups()[1].names.size() == 3);
    CHECK(opt.groups()[1].weight_decay == 0.0);
    CHECK(is_no_decay("x.means", torch::zeros({4, 4})));
    CHECK(!is_no_decay("x.q_proj.weight", torch::zeros({4, 4})));
}

TEST_CASE("train: a per-parameter lr scale groups and steps those parameters with lr * scale", "[train]") {
    auto ps = make_params(3);
    auto plain = make_params(3);
    const auto router_x10 = [](const std::string & n) { return n.find(".router.") != std::string::npos ? 10.0 : 1.0; };
    AdamW opt(ps, AdamWOptions{1e-3, 0.9, 0.999, 1e-8, 0.0}, router_x10);
    REQUIRE(opt.groups().size() == 3);
    CHECK(opt.groups()[2].names == std::vector<std::string>{"model.layers.0.mlp.router.gmm.0.means"});
    CHECK(opt.groups()[2].lr_scale == 10.0);
    AdamW ref(plain, AdamWOptions{1e-3, 0.9, 0.999, 1e-8, 0.0});
    fake_grads(ps, 0);
    fake_grads(plain, 0);
    opt.step(1e-3);
    ref.step(1e-3);
    // the scaled parameter takes the step the unscaled optimizer takes at 10x the lr; the rest are unchanged
    auto ps10 = make_params(3);
    AdamW ref10(ps10, AdamWOptions{1e-2, 0.9, 0.999, 1e-8, 0.0});
    fake_grads(ps10, 0);
    ref10.step(1e-2);
    for (size_t i = 0; i < ps.size(); ++i) {
        const auto & expect = ps[i].first.find(".router.") != std::string::npos ? ps10[i].second : plain[i].second;
        CHECK(torch::equal(ps[i].second, expect));
    }
    CHECK_THROWS_WITH(AdamW(make_params(4), AdamWOptions{}, [](const std::string &) { return 0.0; }),
                      Catch::Contains("lr scale") && Catch::Contains("must be > 0"));
}

TEST_CASE("train: AdamW matches torch::optim::AdamW bit for bit (op sequence) and within 2 ulp (fused)", "[train]") {
  for (const bool fused : {false, true}) {
    auto ours = make_params(1);
    auto ref = make_params(1);
    const double lr = 3e-3, wd = 0.05;
    AdamW opt(ours, AdamWOptions{lr, 0.9, 0.95, 1e-8, wd});
    opt.set_fused(fused);
    std::vector<torch::optim::OptimizerParamGroup> groups;
    std::vector<torch::Tensor> decay, no_decay;
    for (auto & [n, p] : ref) (is_no_decay(n, p) ? no_decay : decay).push_back(p);
    groups.emplace_back(decay, std::make_unique<torch::optim::AdamWOptions>(
                                   torch::optim::AdamWOptions(lr).betas({0.9, 0.95}).eps(1e-8).weight_decay(wd)));
    groups.emplace_back(no_decay, std::make_unique<torch::optim::AdamWOptions>(
                                      torch::optim::AdamWOptions(lr).betas({0.9, 0.95}).eps(1e-8).weight_decay(0.0)));
    torch::optim::AdamW torch_opt(groups, torch::optim::AdamWOptions(lr));
    for (int64_t s = 0; s < 6; ++s) {
        fake_grads(ours, s);
        fake_grads(ref, s);
        opt.step(lr);
        torch_opt.step();
    }
    for (size_t i = 0; i < ours.size(); ++i) {
        const torch::Tensor a = ours[i].second.detach(), b = ref[i].second.detach();
        const double err = (a - b).abs().max().item<double>();
        // 2 ulp of each element after 6 steps: the fused pass does the same float operations, but the
        // build may vectorise/contract them differently from ATen's kernels.
        const double ulp_bound = (b.abs() * (2.0 * std::numeric_limits<float>::epsilon())).max().item<double>();
        INFO((fused ? "fused " : "op sequence ") << ours[i].first << " max abs err " << err);
        if (fused) CHECK(err <= ulp_bound);
        else CHECK(torch::equal(a, b));
    }
  }
}

TEST_CASE("train: AdamW state save/load resumes bit-exactly and rejects mismatches", "[train]") {
    auto a = make_params(2);
    AdamW opt_a(a, AdamWOptions{1e-2, 0.9, 0.999, 1e-8, 0.1});
    for (int64_t s = 0; s < 3; ++s) { fake_grads(a, s); opt_a.step(1e-2); }
    auto state = opt_a.state_dict();
    CHECK(state.size() == 3 * a.size());
    CHECK(state.at("step/lm_head.weight").item<int64_t>() == 3);
    // A second run starts from a copy of the weights and the saved state.
    std::vector<std::pair<std::string, torch::Tensor>> b;
    for (auto & [n, p] : a) b.emplace_back(n, p.detach().clone().requires_grad_(true));
    AdamW opt_b(b, AdamWOptions{1e-2, 0.9, 0.999, 1e-8, 0.1});
    opt_b.load_state_dict(state);
    for (int64_t s = 3; s < 6; ++s) {
        fake_grads(a, s); opt_a.step(1e-2 * (s + 1));
        fake_grads(b, s); opt_b.step(1e-2 * (s + 1));
    }
    for (size_t i = 0; i < a.size(); ++i) CHECK(torch::equal(a[i].second, b[i].second));

    auto bad = state;
    bad["exp_avg/model.embed_tokens.weight"] = torch::zeros({2});
    CHECK_THROWS_WITH(opt_b.load_state_dict(bad), Catch::Contains("model.embed_tokens.weight") && Catch::Contains("does not train"));
    auto wrong_shape = state;
    wrong_shape["exp_avg/lm_head.weight"] = torch::zeros({3, 3});
    CHECK_THROWS_WITH(opt_b.load_state_dict(wrong_shape), Catch::Contains("shape"));
}

TEST_CASE("train: clip_grad_norm measures the global norm and clips to max_norm", "[train]") {
    auto ps = make_params(3);
    fake_grads(ps, 0);
    std::vector<torch::Tensor> params;
    double sq = 0;
    for (auto & [n, p] : ps) { params.push_back(p); sq += p.grad().to(torch::kFloat64).pow(2).sum().item<double>(); }
    const double norm = clip_grad_norm(params, 0.5);
    CHECK(norm == Approx(std::sqrt(sq)).epsilon(1e-6));
    CHECK(global_grad_norm(params) == Approx(0.5).epsilon(1e-5));
    CHECK(clip_grad_norm(params, 0.0) == Approx(0.5).epsilon(1e-5));  // 0 = measure only
    params[0].grad()[0][0] = std::nan("");
    CHECK(std::isnan(clip_grad_norm(params, 1.0)));
}

TEST_CASE("train: cosine schedule with linear warm-up follows HF", "[train]") {
    auto s = LrSchedule::cosine(1e-3, 100, 0.03, 0.0);
    CHECK(s.warmup_steps == 3);  // ceil(0.03 * 100)
    CHECK(s.at(0) == 0.0);
    CHECK(s.at(1) == Approx(1e-3 / 3));
    CHECK(s.at(3) == Approx(1e-3));
    CHECK(s.at(51) > 0.5e-3);
    CHECK(s.at(52) < 0.5e-3);
    CHECK(s.at(100) == Approx(0.0).margin(1e-15));
    auto m = LrSchedule::cosine(1e-3, 10, 0.0, 0.1);
    CHECK(m.at(0) == Approx(1e-3));
    CHECK(m.at(10) == Approx(1e-4));
    CHECK(m.at(5) == Approx(1e-4 + 0.9e-3 * 0.5));
    CHECK(steps_per_epoch(558, 32, 8, 1) == 3);  // ceil(558/256)=3 micro-batches
    CHECK(total_optimizer_steps(1000, 4, 1, 2, 1.5, 0) == 188);  // 250 micro / 2 = 125 per epoch, * 1.5
    CHECK(total_optimizer_steps(1000, 4, 1, 2, 1.0, 7) == 7);
}

TEST_CASE("train: a curriculum phase with its own peak runs its own warm-up and cosine, the rest one schedule", "[train]") {
    using idamoe::train::RunSchedule;
    // No own peaks: exactly the run's one cosine.
    const auto one = RunSchedule::cosine(1e-3, 100, 0.03, 0.0, {{30, 0.0}});
    const auto plain = LrSchedule::cosine(1e-3, 100, 0.03, 0.0);
    for (int64_t s = 0; s <= 100; ++s) CHECK(one.at(s) == plain.at(s));
    // Phase 0 (steps 0-19) at its own 5e-4, phase 1 (20-29) follows the main schedule, then data.train:
    // main spans the 80 other steps, so step 20 is main's step 0 and step 30 main's step 10.
    const auto r = RunSchedule::cosine(1e-3, 100, 0.1, 0.0, {{20, 5e-4}, {10, 0.0}});
    const auto own = LrSchedule::cosine(5e-4, 20, 0.1, 0.0), main = LrSchedule::cosine(1e-3, 80, 0.1, 0.0);
    REQUIRE(r.phases.size() == 1);
    CHECK(r.main.total_steps == 80);
    CHECK(r.at(0) == 0.0);
    CHECK(r.at(2) == Approx(5e-4));  // warm-up ceil(0.1 * 20) = 2 steps
    for (int64_t s = 0; s < 20; ++s) CHECK(r.at(s) == own.at(s));
    CHECK(r.at(19) < 1e-5);          // the phase decays to ~0 by its end
    for (int64_t s = 20; s <= 100; ++s) CHECK(r.at(s) == main.at(s - 20));
    CHECK(r.at(20) == 0.0);          // the main schedule's own warm-up starts after the phase
    CHECK(r.at(28) == Approx(1e-3));
}

TEST_CASE("train: loss normalisation is per target token over the accumulated batch", "[train]") {
    // Two micro-batches with 3 and 7 target tokens: the accumulated gradient must equal the gradient of
    // the token-mean CE over all 10 tokens at once.
    torch::manual_seed(5);
    auto w = torch::randn({6, 4}, torch::requires_grad());
    auto x = torch::randn({10, 6});
    auto y = torch::randint(0, 4, {10});
    auto full = torch::nn::functional::cross_entropy(x.matmul(w), y);
    auto g_full = torch::autograd::grad({full}, {w})[0];
    const int64_t total = 10;
    torch::Tensor g_acc = torch::zeros_like(w);
    for (auto [lo, hi] : {std::pair<int64_t, int64_t>{0, 3}, {3, 10}}) {
        auto ce_sum = torch::nn::functional::cross_entropy(x.slice(0, lo, hi).matmul(w), y.slice(0, lo, hi),
                                                           torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kSum));
        auto obj = micro_batch_objective(ce_sum, total, torch::Tensor(), 2);
        g_acc += torch::autograd::grad({obj}, {w})[0];
    }
    const double err = (g_acc - g_full).abs().max().item<double>();
    INFO("max abs err " << err);
    CHECK(err < 1e-6);
    // Aux terms are averaged over the micro-batches.
    auto aux = torch::tensor(4.0);
    CHECK(micro_batch_objective(torch::tensor(0.0), 10, aux, 2).item<double>() == Approx(2.0));
}

TEST_CASE("train: router losses are per real token over the global batch, however ranks split it", "[train]") {
    // A per-token loss over 120 rows split 90 / 30 over 2 ranks (one micro-batch each), then 50 / 40 / 30
    // over 3 micro-batches on one rank: the reduced objective (rank sum / world, as GradReducer averages)
    // must equal the mean over all 120 rows at once; averaging the per-micro-batch means would not.
    torch::manual_seed(6);
    auto w = torch::randn({5}, torch::requires_grad());
    auto x = torch::randn({120, 5});
    auto row_loss = [&](int64_t lo, int64_t hi) { return x.slice(0, lo, hi).matmul(w).square().mean(); };
    auto g_full = torch::autograd::grad({row_loss(0, 120)}, {w})[0];
    auto reduced = [&](const std::vector<std::pair<int64_t, int64_t>> & parts, int64_t world, int64_t ga) {
        torch::Tensor g = torch::zeros_like(w);
        for (auto [lo, hi] : parts) {
            auto obj = weighted_micro_batch_objective(torch::tensor(0.0), 1, row_loss(lo, hi),
                                                      aux_weight(hi - lo, 120.0, ga, world), world);
            g += torch::autograd::grad({obj}, {w})[0] / static_cast<double>(world);
        }
        return g;
    };
    CHECK((reduced({{0, 90}, {90, 120}}, 2, 1) - g_full).abs().max().item<double>() < 1e-5);
    CHECK((reduced({{0, 50}, {50, 90}, {90, 120}}, 1, 3) - g_full).abs().max().item<double>() < 1e-5);
    // The old rule (mean of the means) is measurably different here.
    torch::Tensor g_old = torch::zeros_like(w);
    for (auto [lo, hi] : {std::pair<int64_t, int64_t>{0, 90}, {90, 120}})
        g_old += torch::autograd::grad({micro_batch_objective(torch::tensor(0.0), 1, row_loss(lo, hi), 1, 2)}, {w})[0] / 2.0;
    CHECK((g_old - g_full).abs().max().item<double>() > 1e-3);
    CHECK(aux_weight(-1, 0, 4, 2) == 0.25);  // a task that cannot count rows: mean over micro-batches
    CHECK(aux_weight(10, 0, 1, 2) == 0.0);   // no real rows anywhere: nothing to learn from
}

TEST_CASE("train: non-finite guard skips, then stops after too many in a row", "[train]") {
    NonFiniteGuard g(2);
    CHECK(g.observe(1.0, 1.0) == NonFiniteGuard::Verdict::ok);
    CHECK(g.observe(NAN, 1.0) == NonFiniteGuard::Verdict::skip);
    CHECK(g.observe(1.0, INFINITY) == NonFiniteGuard::Verdict::skip);
    CHECK(g.observe(1.0, 1.0) == NonFiniteGuard::Verdict::ok);  // the run recovers: counter resets
    CHECK(g.in_row() == 0);
    CHECK(g.observe(NAN, NAN) == NonFiniteGuard::Verdict::skip);
    CHECK(g.observe(NAN, NAN) == NonFiniteGuard::Verdict::skip);
    CHECK(g.observe(NAN, NAN) == NonFiniteGuard::Verdict::stop);
    CHECK(g.total_skipped() == 5);
    CHECK_THAT(g.stop_message(42), Catch::Contains("step 42") && Catch::Contains("max_nonfinite_in_row = 2") &&
                                       Catch::Contains("checkpoint is intact"));
}

TEST_CASE("train: SIGTERM and SIGINT request a stop at the next step boundary", "[train]") {
    clear_stop();
    install_stop_handlers();
    CHECK(!stop_requested());
    std::raise(SIGTERM);
    CHECK(stop_requested());
    CHECK(stop_signal() == SIGTERM);
    clear_stop();
    std::raise(SIGINT);
    CHECK(stop_requested());
    CHECK(stop_signal() == SIGINT);
    clear_stop();
    std::signal(SIGTERM, SIG_DFL);
    std::signal(SIGINT, SIG_DFL);
}
