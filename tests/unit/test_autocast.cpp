// core/autocast.h: model.dtype bfloat16 is refused on CPU with the reason, and the IDA-MoE router keeps
// its autoencoder/GMM math in fp32 when the caller runs under autocast. The CUDA autocast path itself is
// checked by tests/unit/test_cuda.cpp on a GPU machine (not in CI); here the router's Fp32Region is checked
// under CPU autocast, which shares the mechanism (a thread-local dispatch key the region switches off for
// both device types).
#include "core/autocast.h"
#include "core/config.h"
#include "moe/ida_router.h"

#include <ATen/autocast_mode.h>

#include <catch2/catch.hpp>

using namespace idamoe;

TEST_CASE("autocast: bfloat16 on CPU is refused with the reason, float32 never autocasts", "[train]") {
    CHECK_FALSE(core::check_compute_dtype("float32", torch::kCPU));
    CHECK_THROWS_WITH(core::check_compute_dtype("bfloat16", torch::kCPU),
                      Catch::Contains("bf16 autocast on CUDA") && Catch::Contains("CPU runs train in float32"));
    CHECK_THROWS_AS(core::check_compute_dtype("float16", torch::kCPU), core::ConfigError);
    core::AutocastScope off(false);  // disabled scope: touches nothing
    CHECK_FALSE(at::autocast::is_enabled());
}

TEST_CASE("autocast: the IDA router's AE/GMM math stays fp32 under bf16 autocast", "[moe]") {
    moe::MoeLayerConfig c;
    c.layer_index = 0;
    c.d_model = 16;
    c.d_ff = 32;
    c.latent_dim = 4;
    c.centers_per_expert = 2;
    c.ae_hidden = 8;
    moe::IdaRouterImpl router(c);
    router.eval();  // no reactivation draw: two calls must see the same generator state
    const torch::Tensor x = torch::randn({10, 16});
    const moe::RouteOut plain = router.route(x, {});

    at::autocast::set_autocast_cpu_dtype(at::kBFloat16);
    at::autocast::set_cpu_enabled(true);
    // The caller's autocast is live (a Linear here drops to bf16) ...
    CHECK(torch::nn::Linear(16, 4)->forward(x).scalar_type() == at::kBFloat16);
    const moe::RouteOut under = router.route(x, {});
    // ... and is on again after the router's fp32 region.
    CHECK(at::autocast::is_cpu_enabled());
    at::autocast::set_cpu_enabled(false);
    at::autocast::clear_cache();

    CHECK(under.loss.scalar_type() == at::kFloat);
    CHECK(torch::equal(under.loss, plain.loss));
    CHECK(torch::equal(under.idx_TK, plain.idx_TK));
    CHECK(torch::equal(under.gates_TK, plain.gates_TK));
}
