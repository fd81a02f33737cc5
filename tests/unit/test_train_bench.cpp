// Tests: the bench path trains the tiny fixture decoder (dense, MoE, with a vision tower) through the
// real loop and reports consistent numbers.
#include "train/bench.h"

#include "test_utils.h"

#include <catch2/catch.hpp>

using namespace idamoe;

TEST_CASE("bench: dense and MoE+vision runs report throughput, breakdown and FLOPs", "[train]") {
    train::BenchOptions o;
    o.model_dir = test::fixture_path("hf/qwen2");
    o.batch = 2;
    o.seq = 16;
    o.steps = 3;
    o.warmup = 1;
    o.device = "cpu";
    auto dense = train::run_bench(o);
    INFO(dense.dump());
    CHECK(dense["tokens_per_s"].get<double>() > 0);
    CHECK(dense["step_s_median"].get<double>() > 0);
    CHECK(dense["achieved_gflops"].get<double>() > 0);
    CHECK(dense["peak_rss_mb"].get<double>() > 0);
    const auto & b = dense["step_breakdown_ms"];
    CHECK(b["forward"].get<double>() > 0);
    CHECK(b["backward"].get<double>() > 0);
    CHECK(b["forward"].get<double>() + b["backward"].get<double>() + b["optimizer"].get<double>() + b["data"].get<double>() <=
          dense["step_s_median"].get<double>() * 1e3 * 1.5);
    CHECK(std::isfinite(dense["final_loss"].get<double>()));

    o.moe = "ida";
    o.experts = 4;
    o.top_k = 2;
    o.vision_dir = test::fixture_path("hf/clip_vision");
    auto moe = train::run_bench(o);
    INFO(moe.dump());
    CHECK(moe["moe"] == "ida");
    CHECK(moe["tokens_per_s"].get<double>() > 0);
    CHECK(moe["achieved_gflops"].get<double>() > 0);

    // Active parameters grow by exactly one more FFN copy (top-2 of 4) plus the router wg [E, D] in the
    // one MoE layer (layer 0 of 2): never by E copies.
    o.moe = "linear_aux";
    o.vision_dir.clear();
    auto lin = train::run_bench(o);
    const int64_t d_act = lin["params_active_per_token"].get<int64_t>() - dense["params_active_per_token"].get<int64_t>();
    CHECK(d_act == 3 * 64 * 128 + 4 * 64);
}
