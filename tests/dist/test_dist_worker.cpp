// defines: the hidden "[.dist-worker]" test case — one rank of a multi-process [dist] test
//
// Never run directly: tests in test_dist.cpp spawn one copy of idamoe_tests per rank with the launcher
// variables (RANK/WORLD_SIZE/MASTER_* or mpirun's OMPI_*) plus
//   IDAMOE_DIST_MODE     train | exit_early | hang | config_mismatch | bench
//   IDAMOE_DIST_OUT      directory for this rank's results
//   IDAMOE_DIST_TIMEOUT  dist.timeout_s (seconds)
// A worker that throws fails its Catch2 test case, so the process exits non-zero with the message in its log.
#include <catch2/catch.hpp>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <thread>

#include "dist/comm.h"
#include "dist/global.h"
#include "dist/grad_reducer.h"
#include "dist_toy.h"

using namespace idamoe;

namespace {

std::string env_or(const char * name, const std::string & fallback) {
    const char * v = std::getenv(name);
    return v ? std::string(v) : fallback;
}

// The toy training loop of one rank; returns the final parameters. `fail_at_step` >= 0 makes rank 1
// die (exit_early) or stall (hang) there, to exercise the other rank's timeout path.
std::vector<torch::Tensor> train_toy(dist::Comm & comm, bool overlap, const std::string & mode) {
    torch::manual_seed(100 + comm.rank());  // different on purpose: the reducer's broadcast must fix it
    test::ToyNet net;
    {
        torch::NoGradGuard no_grad;
        net->scale.add_(comm.rank());  // frozen params must come from rank 0 too
    }
    std::vector<torch::Tensor> params = test::toy_params(net);
    // 600 bytes: several buckets of float64 params, the expert alone in one, so ordering matters.
    dist::GradReducer reducer(params, comm, 600, overlap);
    REQUIRE(reducer.stats().n_buckets >= 3);
    torch::optim::AdamW opt(net->parameters(), torch::optim::AdamWOptions(1e-2).weight_decay(0.01));

    for (int step = 0; step < test::kToySteps; ++step) {
        if (step == 3 && comm.rank() == 1 && mode == "exit_early") std::_Exit(7);
        if (step == 3 && comm.rank() == 1 && mode == "hang") std::this_thread::sleep_for(std::chrono::seconds(60));
        for (int m = 0; m < test::kToyAccum; ++m) {
            reducer.prepare(m == test::kToyAccum - 1);
            auto [x, y] = test::toy_batch(step, m, comm.rank());
            torch::Tensor loss = torch::mse_loss(net->forward(x, test::toy_uses_expert(m, comm.rank())), y) /
                                 static_cast<double>(test::kToyAccum);
            loss.backward();
        }
        reducer.finalize();
        opt.step();
        for (auto & p : params) p.mutable_grad() = torch::Tensor();  // set_to_none, same in 1.13 and 2.x
    }
    return params;
}

// Share of step time spent blocked on all-reduce, for a few-million-parameter MLP on CPU.
void bench(dist::Comm & comm, const std::string & out_dir) {
    constexpr int64_t kWidth = 1024, kDepth = 8, kBatch = 64;  // 8 x 1M params = 8.4M params, 33.6 MB fp32
    constexpr int kWarmup = 2, kSteps = 10;
    std::ofstream out(out_dir + "/bench_rank" + std::to_string(comm.rank()) + ".txt");
    for (bool overlap : {false, true}) {
        torch::manual_seed(1);
        torch::nn::Sequential mlp;
        for (int64_t i = 0; i < kDepth; ++i) {
            mlp->push_back(torch::nn::Linear(kWidth, kWidth));
            mlp->push_back(torch::nn::ReLU());
        }
        std::vector<torch::Tensor> params = mlp->parameters();
        dist::GradReducer reducer(params, comm, 4u << 20, overlap);  // 4 MB buckets: ~9 of them
        torch::Tensor x = torch::randn({kBatch, kWidth});
        double step_s = 0, wait_s = 0, fin_s = 0;
        for (int s = 0; s < kWarmup + kSteps; ++s) {
            const auto t0 = std::chrono::steady_clock::now();
            reducer.prepare(true);
            mlp->forward(x).square().mean().backward();
            reducer.finalize();
            const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
            for (auto & p : params) p.mutable_grad() = torch::Tensor();
            if (s < kWarmup) continue;
            step_s += dt;
            wait_s += reducer.stats().wait_s_last;
            fin_s += reducer.stats().finalize_s_last;
        }
        out << "overlap=" << overlap << " params=" << reducer.stats().bucket_bytes / 4
            << " buckets=" << reducer.stats().n_buckets << " step_ms=" << 1e3 * step_s / kSteps
            << " wait_ms=" << 1e3 * wait_s / kSteps << " finalize_ms=" << 1e3 * fin_s / kSteps
            << " wait_share=" << wait_s / step_s << "\n";
    }
}

}  // namespace

void run_worker();

TEST_CASE("dist worker: one rank of a multi-process test", "[.dist-worker]") {
    try {
        run_worker();
    } catch (const std::exception & e) {
        // Catch2 wraps messages at 80 columns; the parent greps for the unwrapped line.
        std::fprintf(stderr, "WORKER ERROR: %s\n", e.what());
        std::fflush(stderr);
        throw;
    }
}

void run_worker() {
    const std::string mode = env_or("IDAMOE_DIST_MODE", "");
    const std::string out = env_or("IDAMOE_DIST_OUT", "");
    REQUIRE_FALSE(mode.empty());  // only meaningful when spawned by test_dist.cpp
    REQUIRE_FALSE(out.empty());
    torch::set_num_threads(1);

    core::DistConfig cfg;
    cfg.backend = "gloo";
    cfg.timeout_s = std::stoi(env_or("IDAMOE_DIST_TIMEOUT", "20"));
    dist::Comm comm(cfg, dist::read_launch_env());
    const std::string tag = "_rank" + std::to_string(comm.rank());

    if (mode == "train" || mode == "exit_early" || mode == "hang") {
        for (bool overlap : {true, false}) {
            std::vector<torch::Tensor> params = train_toy(comm, overlap, mode);
            std::vector<torch::Tensor> saved;
            for (auto & p : params) saved.push_back(p.detach().clone());
            torch::save(saved, out + "/params" + tag + (overlap ? "_overlap" : "_post") + ".pt");
        }
        // Metric helpers: expert loads summed over ranks, host values summed.
        torch::Tensor counts_E = torch::tensor({comm.rank() + 1, 10 * (comm.rank() + 1)}, torch::kLong);
        torch::Tensor total_E = dist::all_reduce_sum(comm, counts_E);
        std::vector<double> sums = dist::all_reduce_sum(comm, {0.5 * (comm.rank() + 1), 1.0});
        // Resume state travels from rank 0 as a JSON string; the other ranks' argument is ignored.
        std::string state = comm.broadcast_bytes(comm.rank() == 0 ? "{\"step\":7}" : "stale");
        std::ofstream(out + "/metrics" + tag + ".txt") << total_E[0].item<int64_t>() << " "
                                                          << total_E[1].item<int64_t>() << " " << sums[0] << " "
                                                          << sums[1] << " " << state << "\n";
        comm.barrier();
    } else if (mode == "config_mismatch") {
        const std::string yaml = comm.rank() == 0 ? "train:\n  lr: 2e-5\n" : "train:\n  lr: 1e-3\n";
        dist::check_same_config(comm, dist::config_hash(yaml));
    } else if (mode == "bench") {
        bench(comm, out);
    } else {
        FAIL("unknown IDAMOE_DIST_MODE " << mode);
    }
}
