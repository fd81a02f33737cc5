// GMM core: GEMM expansion vs a naive double loop, finite-difference gradients, fp32 stability at
// extreme parameters, reactivation (IDA-MoE eq. 22-23).
#include <catch2/catch.hpp>
#include <torch/torch.h>

#include <cmath>

#include "moe/gmm.h"
#include "moe/ida_router.h"
#include "unit/test_moe_gradcheck.h"

using namespace idamoe;
using idamoe::test::expect_close;
using idamoe::test::gradcheck;

namespace {

// log pi_c + log N(z | mu_c, var_c) by explicit loops, double.
torch::Tensor naive_log_wp(const torch::Tensor & z, const torch::Tensor & log_pi, const torch::Tensor & mu,
                           const torch::Tensor & var) {
    const int64_t T = z.size(0), C = mu.size(0), L = z.size(1);
    auto za = z.accessor<double, 2>();
    auto ma = mu.accessor<double, 2>();
    auto va = var.accessor<double, 2>();
    auto pa = log_pi.accessor<double, 1>();
    torch::Tensor out = torch::empty({T, C}, torch::kDouble);
    auto oa = out.accessor<double, 2>();
    for (int64_t t = 0; t < T; ++t)
        for (int64_t c = 0; c < C; ++c) {
            double s = 0;
            for (int64_t l = 0; l < L; ++l) {
                const double d = za[t][l] - ma[c][l];
                s += d * d / va[c][l] + std::log(va[c][l]) + std::log(2 * M_PI);
            }
            oa[t][c] = pa[c] - 0.5 * s;
        }
    return out;
}

}  // namespace

TEST_CASE("gmm: GEMM-expanded log-likelihood equals the naive loop (double)", "[moe][gmm]") {
    torch::manual_seed(1);
    const int64_t T = 37, C = 12, L = 5;
    const torch::Tensor z = torch::randn({T, L}, torch::kDouble) * 2 + 3;  // off-centre: exercises the shift
    const torch::Tensor mu = torch::randn({C, L}, torch::kDouble) * 2 + 3;
    const torch::Tensor var = torch::rand({C, L}, torch::kDouble) * 2 + 0.05;
    const torch::Tensor log_pi = torch::log_softmax(torch::randn({C}, torch::kDouble), 0);
    const torch::Tensor fast = moe::gmm_log_weighted_prob(z, log_pi, mu, var);
    CHECK(fast.scalar_type() == torch::kDouble);
    // tolerance: values are O(10-100); GEMM expansion in double loses ~1e-13 relative to the terms
    CHECK(expect_close(fast, naive_log_wp(z, log_pi, mu, var), "log_wp gemm vs loop", 1e-10, 1e-12));
}

TEST_CASE("gmm: finite-difference gradients of the NLL (double)", "[moe][gmm]") {
    torch::manual_seed(2);
    const int64_t T = 16, C = 6, L = 3;
    torch::Tensor z = torch::randn({T, L}, torch::kDouble).requires_grad_();
    torch::Tensor logits = torch::randn({C}, torch::kDouble).requires_grad_();
    torch::Tensor mu = torch::randn({C, L}, torch::kDouble).requires_grad_();
    torch::Tensor raw = (torch::randn({C, L}, torch::kDouble) * 0.3).requires_grad_();
    auto nll = [&] {
        const torch::Tensor var = torch::softplus(raw) + 1e-4;
        return -torch::logsumexp(moe::gmm_log_weighted_prob(z, torch::log_softmax(logits, 0), mu, var), 1).mean();
    };
    // central differences with h = 1e-6 on O(1) functions: truncation ~1e-12, rounding ~1e-10
    CHECK(gradcheck(nll, mu, "gmm nll d/d means") < 1e-7);
    CHECK(gradcheck(nll, raw, "gmm nll d/d var_raw") < 1e-7);
    CHECK(gradcheck(nll, logits, "gmm nll d/d mix_logits") < 1e-7);
    CHECK(gradcheck(nll, z, "gmm nll d/d z") < 1e-7);
}

TEST_CASE("gmm: fp32 stays finite with a near-dead component and a tiny variance", "[moe][gmm]") {
    torch::manual_seed(3);
    const int64_t T = 64, C = 8, L = 32;
    torch::Tensor z = torch::randn({T, L}) * 3;
    torch::Tensor logits = torch::zeros({C});
    {
        torch::NoGradGuard ng;
        logits[0] = std::log(1e-6) + std::log(double(C - 1));  // pi_0 ~ 1e-6
    }
    logits.requires_grad_();
    torch::Tensor mu = torch::randn({C, L}).requires_grad_();
    torch::Tensor mu_tiny = mu.detach().clone();
    {
        torch::NoGradGuard ng;
        mu_tiny[1].copy_(z[0]);  // a point sitting exactly on the tiny-variance component
    }
    mu_tiny.requires_grad_();
    torch::Tensor raw = torch::zeros({C, L});
    {
        torch::NoGradGuard ng;
        raw[1].fill_(-40.0);  // softplus(-40) ~ 4e-18: variance = floor = 1e-5
    }
    raw.requires_grad_();
    const torch::Tensor var = torch::softplus(raw) + 1e-5;
    const torch::Tensor log_wp = moe::gmm_log_weighted_prob(z, torch::log_softmax(logits, 0), mu_tiny, var);
    const torch::Tensor lse = torch::logsumexp(log_wp, 1);
    const torch::Tensor log_post = log_wp - lse.unsqueeze(1);
    const torch::Tensor loss = -lse.mean();
    loss.backward();
    CHECK(torch::isfinite(log_wp).all().item<bool>());
    CHECK(torch::isfinite(log_post).all().item<bool>());
    CHECK(torch::isfinite(logits.grad()).all().item<bool>());
    CHECK(torch::isfinite(mu_tiny.grad()).all().item<bool>());
    CHECK(torch::isfinite(raw.grad()).all().item<bool>());
    // point 0 belongs to component 1 with posterior ~1; the tiny component's quad term dwarfs the others
    CHECK(log_post[0][1].item<float>() > -1e-3f);
    const auto top = moe::select_topk_experts({moe::expert_log_scores(log_post, 4), moe::expert_log_scores(log_post, 4)}, true);
    CHECK(torch::isfinite(top.gates_TK).all().item<bool>());
    CHECK(torch::allclose(top.gates_TK.sum(1), torch::ones({T})));
}

TEST_CASE("gmm: reactivation moves a far, low-weight component, plain NLL does not", "[moe][gmm]") {
    auto grad_of_far_mean = [](bool reactivation) {
        moe::MoeLayerConfig cfg;
        cfg.d_model = 8, cfg.d_ff = 16, cfg.num_experts = 2, cfg.top_k = 1, cfg.centers_per_expert = 2;
        cfg.latent_dim = 2, cfg.ae_hidden = 8, cfg.reactivation = reactivation, cfg.alpha = 1.0, cfg.beta = 1.0;
        moe::IdaRouterImpl router(cfg);
        router.train();
        torch::manual_seed(4);
        const torch::Tensor x = torch::randn({128, 8});
        auto & g = router.gmm_set(0);
        {
            torch::NoGradGuard ng;
            const torch::Tensor z = router.encode(x);
            g.means.copy_(z.mean(0).expand({4, 2}) + 0.1 * torch::randn({4, 2}));
            g.means[3].fill_(20.0);     // far from every latent point (|z| = O(1))
            g.mix_logits.fill_(0.0);
            g.mix_logits[3] = -12.0;    // pi_3 ~ 2e-6: flagged slow with probability ~1; others never flagged
        }
        const moe::RouteOut r = router.route(x, {});
        r.loss.backward();
        const double gn = g.means.grad()[3].norm().item<double>();
        std::printf("reactivation %-3s: |dL/d mu_far| = %.3e, L_react = %.4f\n", reactivation ? "on" : "off", gn,
                    r.parts.at("react").item<double>());
        return gn;
    };
    const double off = grad_of_far_mean(false), on = grad_of_far_mean(true);
    CHECK(off < 1e-20);  // posterior ~ exp(-200): the NLL gradient underflows to 0 in fp32
    CHECK(on > 1.0);     // renormalised within {far}: posterior 1, gradient = mean (z - mu)/var ~ 20
}

TEST_CASE("gmm: reactivation is seeded and resumable from the rng_step buffer", "[moe][gmm]") {
    moe::MoeLayerConfig cfg;
    cfg.d_model = 8, cfg.d_ff = 16, cfg.num_experts = 4, cfg.top_k = 2, cfg.centers_per_expert = 4;
    cfg.latent_dim = 4, cfg.ae_hidden = 8, cfg.seed = 7;
    torch::manual_seed(5);
    const torch::Tensor x = torch::randn({64, 8});
    auto run = [&](moe::IdaRouterImpl & r) { return r.route(x, {}).parts.at("react").item<double>(); };
    moe::IdaRouterImpl a(cfg), b(cfg);
    a.train(), b.train();
    // skew the mixing weights so several components are flagged with probability strictly in (0, 1)
    for (auto * r : {&a, &b})
        for (int j = 0; j < 2; ++j) {
            torch::NoGradGuard ng;
            r->gmm_set(j).mix_logits.copy_(torch::linspace(-2, 2, 16));
        }
    run(a), run(a);
    const double a3 = run(a);
    // b resumes at step 2 by loading a's buffer value (what a checkpoint restore does)
    {
        torch::NoGradGuard ng;
        b.named_buffers()["rng_step"].fill_(2);
    }
    const double b3 = run(b);
    CHECK(a3 == b3);
    CHECK(a.named_buffers()["rng_step"].item<int64_t>() == 3);
}
