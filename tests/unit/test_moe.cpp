// MoE layer: fast path vs naive double loops, finite-difference gradients, gradient isolation, upcycling,
// parameter names, baselines, statistics, errors.
#include <catch2/catch.hpp>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "model/mlp.h"
#include "moe/ida_router.h"
#include "moe/linear_routers.h"
#include "moe/moe_layer.h"
#include "unit/test_moe_gradcheck.h"

using namespace idamoe;
using idamoe::test::expect_close;
using idamoe::test::gradcheck;

namespace {

moe::MoeLayerConfig small_cfg(const std::string & router) {
    moe::MoeLayerConfig c;
    c.layer_index = 3, c.d_model = 12, c.d_ff = 20, c.router = router, c.num_experts = 4, c.top_k = 2;
    c.latent_dim = 4, c.centers_per_expert = 3, c.ae_hidden = 16, c.seed = 11;
    return c;
}

std::shared_ptr<moe::MoeLayerImpl> as_moe(const std::shared_ptr<model::FfnImpl> & f) {
    return std::dynamic_pointer_cast<moe::MoeLayerImpl>(f);
}

// Padding mask with a different number of real tokens per row.
torch::Tensor ragged_mask(int64_t B, int64_t T) {
    torch::Tensor m = torch::ones({B, T}, torch::kLong);
    for (int64_t b = 0; b < B; ++b) m[b].narrow(0, T - b * 2, b * 2).fill_(0);
    return m;
}

// Naive IDA routing (loops over tokens, ranks, components, dims) + per-token combine, double.
torch::Tensor naive_ida(moe::MoeLayerImpl & layer, const torch::Tensor & x_BTD, const torch::Tensor & mask_BT) {
    auto & R = dynamic_cast<moe::IdaRouterImpl &>(*layer.router);
    const auto & cfg = layer.config();
    const int64_t D = cfg.d_model, N = cfg.num_experts, M = cfg.centers_per_expert, C = N * M, K = cfg.top_k;
    const torch::Tensor x = x_BTD.reshape({-1, D}), w = mask_BT.reshape({-1});
    const torch::Tensor z = R.encode(x).detach();
    torch::Tensor y = torch::zeros_like(x);
    auto experts = layer.expert_ptrs();
    for (int64_t t = 0; t < x.size(0); ++t) {
        if (w[t].item<int64_t>() == 0) continue;
        std::vector<int64_t> chosen;
        std::vector<double> pstar;
        for (int64_t j = 0; j < K; ++j) {
            auto & g = R.gmm_set(j);
            const torch::Tensor logpi = g.log_pi().detach(), var = g.variances().detach(), mu = g.means.detach();
            std::vector<double> lw(C);
            double mx = -1e300;
            for (int64_t c = 0; c < C; ++c) {
                double s = 0;
                for (int64_t l = 0; l < cfg.latent_dim; ++l) {
                    const double d = z[t][l].item<double>() - mu[c][l].item<double>(), v = var[c][l].item<double>();
                    s += d * d / v + std::log(v) + std::log(2 * M_PI);
                }
                lw[c] = logpi[c].item<double>() - 0.5 * s;
                mx = std::max(mx, lw[c]);
            }
            double se = 0;
            for (double v : lw) se += std::exp(v - mx);
            const double lse = mx + std::log(se);
            int64_t best = -1;
            double best_s = -1;
            for (int64_t i = 0; i < N; ++i) {
                if (std::find(chosen.begin(), chosen.end(), i) != chosen.end()) continue;
                double s = 0;
                for (int64_t m = 0; m < M; ++m) s = std::max(s, std::exp(lw[i * M + m] - lse));  // eq. 16-17
                if (s > best_s) best_s = s, best = i;                                              // eq. 18
            }
            chosen.push_back(best);
            pstar.push_back(best_s);
        }
        double zsum = 0;
        for (double p : pstar) zsum += std::exp(p);
        for (int64_t j = 0; j < K; ++j)  // eq. 19-20
            y[t] += std::exp(pstar[j]) / zsum * experts[chosen[j]]->apply(x[t].unsqueeze(0)).squeeze(0).detach();
    }
    return y.view(x_BTD.sizes());
}

// Naive linear_aux (eval: deterministic top-k) with DeepSpeed capacity, double.
torch::Tensor naive_linear_capacity(moe::MoeLayerImpl & layer, const torch::Tensor & x_BTD, const torch::Tensor & mask_BT) {
    auto & R = dynamic_cast<moe::LinearRouterImpl &>(*layer.router);
    const auto & cfg = layer.config();
    const int64_t D = cfg.d_model, N = cfg.num_experts, K = cfg.top_k;
    const torch::Tensor x = x_BTD.reshape({-1, D}), w = mask_BT.reshape({-1}), W = R.wg->weight.detach();
    const int64_t T = x.size(0);
    std::vector<std::vector<int64_t>> idx(T);
    std::vector<std::vector<double>> gate(T);
    int64_t S = 0;
    for (int64_t t = 0; t < T; ++t) {
        if (w[t].item<int64_t>() == 0) continue;
        ++S;
        std::vector<double> p(N);
        double mx = -1e300, se = 0;
        for (int64_t i = 0; i < N; ++i) {
            double s = 0;
            for (int64_t d = 0; d < D; ++d) s += W[i][d].item<double>() * x[t][d].item<double>();
            p[i] = s, mx = std::max(mx, s);
        }
        for (double & v : p) se += (v = std::exp(v - mx));
        for (double & v : p) v /= se;
        std::vector<int64_t> order(N);
        for (int64_t i = 0; i < N; ++i) order[i] = i;
        std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return p[a] > p[b]; });
        double gs = 0;
        for (int64_t j = 0; j < K; ++j) idx[t].push_back(order[j]), gs += p[order[j]];
        for (int64_t j = 0; j < K; ++j) gate[t].push_back(p[order[j]] / gs);
    }
    const double cap = std::ceil(double(S) / N * cfg.capacity_factor * K);
    std::vector<int64_t> fill(N, 0);
    std::vector<std::vector<bool>> keep(T, std::vector<bool>(K, false));
    for (int64_t j = 0; j < K; ++j)  // rank-major queue, token order within a rank (DeepSpeed loc1/loc2)
        for (int64_t t = 0; t < T; ++t)
            if (!idx[t].empty()) keep[t][j] = fill[idx[t][j]]++ < cap;
    torch::Tensor y = torch::zeros_like(x);
    auto experts = layer.expert_ptrs();
    for (int64_t t = 0; t < T; ++t) {
        if (idx[t].empty()) continue;
        double tot = 0, kept = 0;
        for (int64_t j = 0; j < K; ++j) tot += gate[t][j], kept += keep[t][j] ? gate[t][j] : 0;
        for (int64_t j = 0; j < K; ++j)
            if (keep[t][j])
                y[t] += gate[t][j] * tot / std::max(kept, 1e-7) *
                        experts[idx[t][j]]->apply(x[t].unsqueeze(0)).squeeze(0).detach();
    }
    return y.view(x_BTD.sizes());
}

}  // namespace

TEST_CASE("moe: IDA fast path equals a naive double loop (routing + dispatch + combine)", "[moe]") {
    auto cfg = small_cfg("ida");
    moe::MoeLayerImpl layer(cfg);
    layer.to(torch::kDouble);
    layer.eval();
    torch::manual_seed(21);
    for (auto & p : layer.parameters()) {  // spread the experts apart so routing errors would show
        torch::NoGradGuard ng;
        p.add_(torch::randn_like(p) * 0.3);
    }
    const torch::Tensor x = torch::randn({3, 10, cfg.d_model}, torch::kDouble);
    const torch::Tensor mask = ragged_mask(3, 10);
    const torch::Tensor y = layer.forward(x, mask);
    CHECK(expect_close(y, naive_ida(layer, x, mask), "ida layer fast vs naive", 1e-12, 1e-10));
    const auto * aux = layer.aux();
    CHECK(aux->topk_idx_TK.size(0) == mask.sum().item<int64_t>());
    CHECK(aux->counts_E.sum().item<double>() == 2.0 * mask.sum().item<double>());  // padding not counted
}

TEST_CASE("moe: capacity-factor drops match a naive DeepSpeed-order loop", "[moe]") {
    auto cfg = small_cfg("linear_aux");
    cfg.capacity_factor = 0.6;  // capacity ceil(S/4*0.6*2) < S/2: forces drops
    moe::MoeLayerImpl layer(cfg);
    layer.to(torch::kDouble);
    layer.eval();
    torch::manual_seed(22);
    for (auto & p : layer.parameters()) {
        torch::NoGradGuard ng;
        p.add_(torch::randn_like(p) * 0.3);
    }
    const torch::Tensor x = torch::randn({2, 16, cfg.d_model}, torch::kDouble);
    const torch::Tensor mask = ragged_mask(2, 16);
    const torch::Tensor y = layer.forward(x, mask);
    CHECK(expect_close(y, naive_linear_capacity(layer, x, mask), "linear cf=0.6 fast vs naive", 1e-12, 1e-10));
    const double drop = layer.stats().drop_rate.item<double>();
    std::printf("drop rate at cf 0.6: %.3f\n", drop);
    CHECK(drop > 0.0);
}

TEST_CASE("moe: finite-difference gradients of AE loss and expert outputs (double)", "[moe]") {
    auto cfg = small_cfg("ida");
    moe::MoeLayerImpl layer(cfg);
    layer.to(torch::kDouble);
    layer.train();
    torch::manual_seed(23);
    const torch::Tensor x = torch::randn({2, 6, cfg.d_model}, torch::kDouble).requires_grad_();
    const torch::Tensor mask = ragged_mask(2, 6);
    const torch::Tensor R = torch::randn({2, 6, cfg.d_model}, torch::kDouble);
    auto & router = dynamic_cast<moe::IdaRouterImpl &>(*layer.router);
    router.eval();  // reactivation off: the loss must be a deterministic function for finite differences
    auto task = [&] { return (layer.forward(x, mask) * R).sum(); };
    auto ae_loss = [&] {  // L_AE with its graph (parts are detached)
        const torch::Tensor u = x.detach().reshape({-1, cfg.d_model});
        const torch::Tensor rec = router.decoder->forward(router.encoder->forward(u));
        return moe::weighted_mean((rec - u).square().mean(1), mask.reshape({-1}).to(torch::kDouble));
    };
    auto experts = layer.expert_ptrs();
    // (not d/d x here: IDA gates depend on x numerically but carry no gradient by design; see below)
    CHECK(gradcheck(task, experts[1]->gate_proj->weight, "moe out d/d expert1 gate") < 1e-6);
    CHECK(gradcheck(task, experts[2]->down_proj->weight, "moe out d/d expert2 down") < 1e-6);
    CHECK(gradcheck(ae_loss, router.encoder->named_parameters()["1.weight"], "L_AE d/d encoder lin1") < 1e-6);
    CHECK(gradcheck(ae_loss, router.decoder->parameters()[2], "L_AE d/d decoder lin2") < 1e-6);
    // the router's own loss through the layer's forward path, w.r.t. GMM parameters
    auto router_loss = [&] { return router.route(x.reshape({-1, cfg.d_model}), mask.reshape({-1}).to(torch::kDouble)).loss; };
    CHECK(gradcheck(router_loss, router.gmm_set(1).means, "router loss d/d gmm1 means") < 1e-6);
    CHECK(gradcheck(router_loss, router.gmm_set(0).var_raw, "router loss d/d gmm0 var_raw") < 1e-6);

    // a task-trained router: d/d x covers gather, experts, gate gradient and index_add
    auto lcfg = small_cfg("linear_aux");
    moe::MoeLayerImpl lin(lcfg);
    lin.to(torch::kDouble);
    lin.eval();
    auto ltask = [&] { return (lin.forward(x, mask) * R).sum() + lin.aux()->loss; };
    CHECK(gradcheck(ltask, x, "linear moe out+aux d/d x") < 1e-6);
    CHECK(gradcheck(ltask, dynamic_cast<moe::LinearRouterImpl &>(*lin.router).wg->weight, "linear moe d/d wg") < 1e-6);
}

TEST_CASE("moe: gradient isolation between the task loss and the IDA router", "[moe]") {
    auto cfg = small_cfg("ida");
    moe::MoeLayerImpl layer(cfg);
    layer.train();
    torch::manual_seed(24);
    const torch::Tensor x = torch::randn({2, 8, cfg.d_model}).requires_grad_();
    const torch::Tensor mask = ragged_mask(2, 8);
    const torch::Tensor head = torch::randn({cfg.d_model, 7});
    const torch::Tensor labels = torch::randint(7, {16});

    // CE from the layer output: no gradient may reach the autoencoder or the GMMs
    torch::Tensor y = layer.forward(x, mask);
    torch::nn::functional::cross_entropy(torch::mm(y.reshape({-1, cfg.d_model}), head), labels).backward();
    int64_t router_params = 0;
    for (const auto & kv : layer.router->named_parameters()) {
        ++router_params;
        INFO(kv.key());
        CHECK((!kv.value().grad().defined() || kv.value().grad().abs().max().item<float>() == 0.0f));
    }
    CHECK(router_params > 0);
    CHECK(layer.expert_ptrs()[0]->up_proj->weight.grad().defined());

    // L_AE + L_GMM (+ L_react): no gradient may reach the backbone input or the experts
    x.mutable_grad() = torch::Tensor();
    for (auto & p : layer.parameters()) p.mutable_grad() = torch::Tensor();
    layer.forward(x, mask);
    layer.aux()->loss.backward();
    CHECK((!x.grad().defined() || x.grad().abs().max().item<float>() == 0.0f));
    for (auto * e : layer.expert_ptrs())
        CHECK((!e->gate_proj->weight.grad().defined() || e->gate_proj->weight.grad().abs().max().item<float>() == 0.0f));
    auto & router = dynamic_cast<moe::IdaRouterImpl &>(*layer.router);
    CHECK(router.gmm_set(0).means.grad().abs().max().item<float>() > 0.0f);
    CHECK(router.encoder->named_parameters()["1.weight"].grad().abs().max().item<float>() > 0.0f);
}

TEST_CASE("moe: upcycled MoE with identical experts equals the dense FFN", "[moe]") {
    for (const std::string r : {"ida", "linear_aux", "st_moe", "xmoe", "auxfree"}) {
        auto cfg = small_cfg(r);
        torch::manual_seed(25);
        auto dense = std::make_shared<model::SwiGluMlpImpl>(cfg.d_model, cfg.d_ff);  // the decoder's dense MLP
        auto layer = as_moe(moe::upcycle(dense, cfg));
        REQUIRE(layer);
        layer->train();
        const torch::Tensor x = torch::randn({2, 9, cfg.d_model});
        const torch::Tensor mask = ragged_mask(2, 9);
        const torch::Tensor y = layer->forward(x, mask), yd = dense->forward(x, {});
        const torch::Tensor real = mask.to(torch::kBool);
        // fp32: two gate-weighted copies of the same output, gates summing to 1 up to rounding
        CHECK(expect_close(y.index({real}), yd.index({real}), "upcycled " + r + " vs dense", 1e-6, 1e-5));
        CHECK(y.index({~real}).abs().max().item<float>() == 0.0f);  // padding is not routed
    }
}

TEST_CASE("moe: parameter names are HF-style and the warm-up router carries over by name", "[moe]") {
    auto cfg = small_cfg("ida");
    auto dense = std::make_shared<moe::SwiGluFfnImpl>(cfg.d_model, cfg.d_ff);
    auto warm = moe::attach_router_warmup(dense, cfg);
    const auto wp = warm->named_parameters();
    for (const char * k : {"gate_proj.weight", "up_proj.weight", "down_proj.weight", "router.gmm.0.means",
                           "router.gmm.1.mix_logits", "router.gmm.1.var_raw", "router.encoder.1.weight",
                           "router.decoder.2.weight"})
        CHECK(wp.contains(k));
    CHECK(warm->named_buffers().contains("router.rng_step"));
    // stage 2 trains the router: its forward gives the dense output and router losses
    torch::manual_seed(26);
    const torch::Tensor x = torch::randn({2, 5, cfg.d_model});
    CHECK(torch::equal(warm->forward(x, {}), dense->forward(x, {})));
    REQUIRE(warm->aux() != nullptr);
    CHECK(warm->aux()->parts.count("gmm") == 1);
    CHECK(warm->aux()->counts_E.sum().item<float>() == 20.0f);

    auto moe_layer = moe::upcycle(warm, cfg);
    const auto mp = moe_layer->named_parameters();
    for (const char * k : {"experts.0.gate_proj.weight", "experts.3.down_proj.weight", "router.gmm.0.means"})
        CHECK(mp.contains(k));
    CHECK(!mp.contains("gate_proj.weight"));
    // the router's tensors carry over name for name (same values)
    for (const auto & kv : wp)
        if (kv.key().rfind("router.", 0) == 0) CHECK(torch::equal(kv.value(), mp[kv.key()]));
    // a stage-3 model built fresh loads the stage-2 router by name too
    auto fresh = moe::upcycle(dense, cfg);
    {
        torch::NoGradGuard ng;
        auto fp = fresh->named_parameters();
        for (const auto & kv : wp)
            if (kv.key().rfind("router.", 0) == 0) fp[kv.key()].copy_(kv.value());
    }
    CHECK(torch::equal(fresh->named_parameters()["router.gmm.1.means"], wp["router.gmm.1.means"]));
    auto ds = moe::upcycle(dense, small_cfg("deepseek"));
    CHECK(ds->named_parameters().contains("shared_experts.0.up_proj.weight"));
    CHECK(ds->named_parameters().contains("router.wg.weight"));
}

TEST_CASE("moe: baseline routers report their losses and statistics", "[moe]") {
    torch::manual_seed(27);
    const torch::Tensor x = torch::randn({2, 16, 12});
    const torch::Tensor mask = ragged_mask(2, 16);
    for (const std::string r : {"linear_aux", "st_moe", "xmoe", "auxfree", "deepseek", "ida"}) {
        auto cfg = small_cfg(r);
        moe::MoeLayerImpl layer(cfg);
        layer.train();
        const torch::Tensor y = layer.forward(x, mask);
        const auto * aux = layer.aux();
        REQUIRE(aux->loss.defined());
        (y.square().mean() + aux->loss).backward();
        const auto & st = layer.stats();
        const double H = st.entropy.item<double>(), cv = st.cv.item<double>();
        const torch::Tensor c = st.counts_E.to(torch::kLong);
        std::printf("%-10s loss %.4f entropy %.3f bits cv %.3f counts [%lld %lld %lld %lld]\n", r.c_str(),
                    aux->loss.item<double>(), H, cv, (long long)c[0].item<int64_t>(), (long long)c[1].item<int64_t>(),
                    (long long)c[2].item<int64_t>(), (long long)c[3].item<int64_t>());
        CHECK(H >= 0.0);
        CHECK(H <= 2.0 + 1e-5);  // log2(4)
        CHECK(st.counts_E.sum().item<float>() == 2.0f * mask.sum().item<float>());
        CHECK(torch::isfinite(aux->loss).item<bool>());
        if (r == "linear_aux" || r == "xmoe" || r == "deepseek") CHECK(aux->parts.count("aux") == 1);
        if (r == "st_moe") CHECK(aux->parts.count("z") == 1);
        if (r == "ida") {
            CHECK(aux->parts.count("ae") == 1);
            CHECK(st.pi_min.defined());
        }
        if (r == "auxfree") {
            auto & af = dynamic_cast<moe::AuxFreeRouterImpl &>(*layer.router);
            CHECK(af.expert_bias.abs().sum().item<float>() > 0.0f);  // moved by the load feedback
        }
        if (r != "ida" && r != "auxfree") {  // task-trained routers get gradient through the gates
            bool any = false;
            for (auto & p : layer.router->parameters()) any = any || (p.grad().defined() && p.grad().abs().sum().item<float>() > 0);
            CHECK(any);
        }
    }
    // balance loss (eq. 9-11) is 1 at uniform routing
    const torch::Tensor probs = torch::full({8, 4}, 0.25);
    const torch::Tensor idx = torch::tensor({0, 1, 2, 3, 0, 1, 2, 3, 1, 0, 3, 2, 1, 0, 3, 2}, torch::kLong).view({8, 2});
    CHECK(moe::balance_loss(probs, idx, {}).item<float>() == Approx(1.0f));
}

TEST_CASE("moe: configuration errors name the layer and the expected shape", "[moe]") {
    auto cfg = small_cfg("ida");
    cfg.top_k = 5;
    CHECK_THROWS_WITH(moe::MoeLayerImpl(cfg), Catch::Contains("moe layer 3") && Catch::Contains("top_k"));
    cfg = small_cfg("ida");
    cfg.centers_per_expert = 0;
    CHECK_THROWS_WITH(moe::MoeLayerImpl(cfg), Catch::Contains("centers_per_expert"));
    cfg = small_cfg("nope");
    CHECK_THROWS_WITH(moe::MoeLayerImpl(cfg), Catch::Contains("unknown router"));
    cfg = small_cfg("ida");
    auto dense = std::make_shared<moe::SwiGluFfnImpl>(16, cfg.d_ff);
    CHECK_THROWS_WITH(moe::upcycle(dense, cfg), Catch::Contains("layer 3") && Catch::Contains("expected [20, 12]"));
    moe::MoeLayerImpl layer(cfg);
    CHECK_THROWS_WITH(layer.forward(torch::randn({2, 3, 16}), {}), Catch::Contains("expected x [B, T, 12]"));
}
