// idamoe-moe-bench: forward+backward time of one MoE layer vs the dense FFN of the same shape, and the
// router's share of the MoE time, for the given routers.
//
//   idamoe-moe-bench [--tokens 4096 --d-model 2048 --d-ff 5632 --experts 4 --top-k 2 --latent 32
//                     --centers 16 --iters 3 --warmup 1 --routers ida,linear_aux --threads 2]
//
// What is timed (median over --iters interleaved rounds after --warmup, wall clock, this process's threads):
//   dense   y = FFN(x); y.backward(dy)                                    x requires grad (backbone)
//   moe     y = MoE(x, mask); (y . dy + aux_loss).backward()              train mode (reactivation on)
//   router  r = router.route(x); (r.loss + r.gates . dg).backward()      the router alone, same inputs
// Router share = router / moe. The router's cost inside the layer is the same work, so the share is a
// fair estimate of the router overhead (it excludes dispatch/combine, which are reported inside "moe").
#include <CLI/CLI.hpp>
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <functional>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include <torch/csrc/autograd/profiler_legacy.h>

#include "core/runtime.h"
#include "moe/moe_layer.h"

using namespace idamoe;

namespace {

// Medians of `iters` rounds; each round times every function once, in order, after `warmup` untimed
// rounds. Interleaving matters here: timed one after the other, whichever layer came first ran up to
// 15% slower (allocator growth, machine drift), which moved the MoE/dense ratio by 0.2-0.3.
std::vector<double> interleaved_median_ms(const std::vector<std::function<void()>> & fns, int warmup, int iters) {
    for (int i = 0; i < warmup; ++i)
        for (const auto & fn : fns) fn();
    std::vector<std::vector<double>> ms(fns.size());
    for (int i = 0; i < iters; ++i) {
        for (size_t f = 0; f < fns.size(); ++f) {
            const auto t0 = std::chrono::steady_clock::now();
            fns[f]();
            ms[f].push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
        }
    }
    std::vector<double> med;
    for (auto & v : ms) {
        std::sort(v.begin(), v.end());
        med.push_back(v[v.size() / 2]);
    }
    return med;
}

}  // namespace

int main(int argc, char ** argv) {
    // The same CPU run-time settings as idamoe-train (passive OpenMP, freed memory kept in the heap), so the
    // layer is timed as training runs it.
    idamoe::core::tune_cpu_runtime(argv);
    CLI::App app{"idamoe-moe-bench: MoE layer vs dense FFN, forward+backward"};
    int64_t T = 4096, D = 2048, F = 5632, N = 4, K = 2, L = 32, M = 16;
    int warmup = 1, iters = 3, threads = 0;
    std::string routers = "ida,linear_aux", trace;
    bool flush_denormal = false;
    app.add_option("--tokens", T, "tokens per batch");
    app.add_option("--d-model", D);
    app.add_option("--d-ff", F);
    app.add_option("--experts", N);
    app.add_option("--top-k", K);
    app.add_option("--latent", L, "IDA latent dim");
    app.add_option("--centers", M, "IDA components per expert");
    app.add_option("--warmup", warmup);
    app.add_option("--iters", iters);
    app.add_option("--threads", threads, "intra-op threads for ATen and OpenBLAS (0: leave the defaults, e.g. OMP_NUM_THREADS)");
    app.add_option("--routers", routers, "comma-separated router kinds");
    app.add_option("--trace", trace, "write chrome traces (legacy autograd profiler) of one router fwd+bwd and one MoE layer fwd+bwd per router");
    app.add_flag("--flush-denormal", flush_denormal, "set the CPU flush-denormal mode (torch.set_flush_denormal)");
    CLI11_PARSE(app, argc, argv);
    if (flush_denormal) at::globalContext().setFlushDenormal(true);
    if (threads > 0) idamoe::core::set_compute_threads(threads);

    torch::manual_seed(0);
    std::printf("idamoe-moe-bench: T=%lld D=%lld F=%lld N=%lld k=%lld latent=%lld M=%lld threads=%d (torch %s)\n",
                (long long)T, (long long)D, (long long)F, (long long)N, (long long)K, (long long)L, (long long)M,
                torch::get_num_threads(), TORCH_VERSION);
    const torch::Tensor x0 = torch::randn({1, T, D});
    const torch::Tensor dy = torch::randn({1, T, D});
    const torch::Tensor mask = torch::ones({1, T}, torch::kLong);

    auto dense = std::make_shared<moe::SwiGluFfnImpl>(D, F);
    std::vector<std::function<void()>> fns = {[&] {
        torch::Tensor x = x0.clone().requires_grad_();
        dense->forward(x, {}).backward(dy);
        dense->zero_grad();
    }};
    std::vector<std::string> names;
    std::vector<std::shared_ptr<moe::MoeLayerImpl>> layers;
    const torch::Tensor dg = torch::randn({T, K});
    std::stringstream ss(routers);
    for (std::string name; std::getline(ss, name, ',');) {
        moe::MoeLayerConfig cfg;
        cfg.d_model = D, cfg.d_ff = F, cfg.router = name, cfg.num_experts = N, cfg.top_k = K;
        cfg.latent_dim = L, cfg.centers_per_expert = M, cfg.layer_index = 0;
        auto layer = std::dynamic_pointer_cast<moe::MoeLayerImpl>(moe::upcycle(dense, cfg));
        layer->train();
        names.push_back(name);
        layers.push_back(layer);
        fns.push_back([&x0, &dy, &mask, layer] {
            torch::Tensor x = x0.clone().requires_grad_();
            torch::Tensor y = layer->forward(x, mask);
            ((y * dy).sum() + layer->aux()->loss).backward();
            layer->zero_grad();
        });
        fns.push_back([&x0, &dg, T, D, layer] {
            torch::Tensor x = x0.reshape({T, D}).clone().requires_grad_();
            moe::RouteOut r = layer->router->route(x, {});
            torch::Tensor l = r.loss + (r.gates_TK.to(torch::kFloat) * dg).sum();
            if (l.requires_grad()) l.backward();
            layer->zero_grad();
        });
    }
    const std::vector<double> ms = interleaved_median_ms(fns, warmup, iters);
    const double t_dense = ms[0];
    std::printf("dense FFN fwd+bwd: %.1f ms\n", t_dense);
    for (size_t i = 0; i < layers.size(); ++i) {
        const double t_moe = ms[1 + 2 * i], t_router = ms[2 + 2 * i];
        if (!trace.empty()) {  // the router alone, and the whole layer to see where the rest of its time goes
            {
                torch::autograd::profiler::RecordProfile guard(trace + "." + names[i] + ".json");
                fns[2 + 2 * i]();
            }
            torch::autograd::profiler::RecordProfile guard(trace + "." + names[i] + ".layer.json");
            fns[1 + 2 * i]();
        }
        const auto & st = layers[i]->stats();
        std::printf("%-10s MoE fwd+bwd: %.1f ms (%.2fx dense) | router alone: %.1f ms = %.2f%% of the MoE layer | "
                    "cv %.3f entropy %.3f bits\n",
                    names[i].c_str(), t_moe, t_moe / t_dense, t_router, 100.0 * t_router / t_moe, st.cv.item<double>(),
                    st.entropy.item<double>());
    }
    return 0;
}
