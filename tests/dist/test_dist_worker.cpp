// defines: the hidden "[.dist-worker]" test case — one rank of a multi-process [dist] test
//
// Never run directly: tests in test_dist.cpp spawn one copy of idamoe_tests per rank with the launcher
// variables (RANK/WORLD_SIZE/MASTER_* or mpirun's OMPI_*) plus
//   IDAMOE_DIST_MODE     train | exit_early | hang | config_mismatch | bench
//   IDAMOE_DIST_OUT      directory for this rank's results
//   IDAMOE_DIST_TIMEOUT  dist.timeout_s (seconds)
// A worker that throws fails its Catch2 test case, so the process exits non-zero with the message in its log.
#include <catch2/catch.hpp>

#include <algorithm>
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
        // Overlap: buckets leave during backward — on rank 0 all 5 but the dead layer's, on rank 1 only
        // the one before its unused expert (launch order is fixed). Without overlap: none.
        if (overlap)
            REQUIRE(reducer.stats().launched_in_backward_last >= (comm.rank() == 0 ? 5 : 1));
        else
            REQUIRE(reducer.stats().launched_in_backward_last == 0);
        opt.step();
        for (auto & p : params) p.mutable_grad() = torch::Tensor();  // set_to_none, same in 1.13 and 2.x
    }
    return params;
}

// Several backward() calls in one sync micro-step. Step 1: the first backward (no expert) sends the
// l2 bucket, and l1's buckets wait behind the unused expert's; the second reaches only l1, so its second
// gradient lands before its bucket leaves and is accepted. Step 2: a second backward through l2, whose
// bucket already left, is refused. Writes the step-1 gradients and the step-2 error.
void two_backward(dist::Comm & comm, const std::string & prefix) {
    torch::manual_seed(100 + comm.rank());
    test::ToyNet net;
    std::vector<torch::Tensor> params = test::toy_params(net);
    dist::GradReducer reducer(params, comm, 600, /*overlap=*/true);
    auto [x, y] = test::toy_batch(0, 0, comm.rank());
    reducer.prepare(true);
    torch::mse_loss(net->forward(x, false), y).backward();
    net->l1(x).square().mean().backward();
    reducer.finalize();
    std::vector<torch::Tensor> grads;
    for (auto & p : params) grads.push_back(p.grad().defined() ? p.grad().clone() : torch::full({1}, -12345.0));
    torch::save(grads, prefix + "_grads.pt");

    reducer.prepare(true);
    torch::Tensor loss = torch::mse_loss(net->forward(x, false), y);
    loss.backward({}, /*retain_graph=*/true);
    std::string error = "no error";
    try {
        loss.backward();
    } catch (const std::exception & e) {
        error = e.what();
    }
    std::ofstream(prefix + "_error.txt") << error;
}

// Share of step time spent blocked on all-reduce, for a few-million-parameter MLP on CPU, overlap off/on,
// at DDP's default 25 MB buckets and at 4 MB. Also the time of one blocking all-reduce of all gradients.
void bench(dist::Comm & comm, const std::string & out_dir) {
    constexpr int64_t kWidth = 1024, kDepth = 8, kBatch = 64;  // 8 x (1024^2 + 1024) = 8.4M params, 33.6 MB fp32
    constexpr int kWarmup = 2, kSteps = 10;  // for the plain all-reduce timing
    std::ofstream out(out_dir + "/bench_rank" + std::to_string(comm.rank()) + ".txt");
    torch::manual_seed(1);
    torch::nn::Sequential mlp;
    for (int64_t i = 0; i < kDepth; ++i) {
        mlp->push_back(torch::nn::Linear(kWidth, kWidth));
        mlp->push_back(torch::nn::ReLU());
    }
    std::vector<torch::Tensor> params = mlp->parameters();
    int64_t n_params = 0;
    for (auto & p : params) n_params += p.numel();
    torch::Tensor x = torch::randn({kBatch, kWidth});

    {
        torch::Tensor flat = torch::zeros({n_params});
        double t = 0;
        for (int s = 0; s < kWarmup + kSteps; ++s) {
            const auto t0 = std::chrono::steady_clock::now();
            comm.all_reduce_(flat, dist::ReduceOp::kSum, "bench all-reduce").wait();
            if (s >= kWarmup) t += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        }
        out << "params=" << n_params << " one blocking all-reduce of all grads: " << 1e3 * t / kSteps << " ms\n";
    }
    // The machine is shared: rounds alternate overlap off/on so load drift hits both, and medians
    // over all measured steps are reported.
    constexpr int kRounds = 3, kRoundSteps = 5;
    auto median = [](std::vector<double> v) {
        std::sort(v.begin(), v.end());
        return v[v.size() / 2];
    };
    for (int64_t bucket_mb : {25, 4}) {
        std::vector<double> step_ms[2], wait_ms[2], share[2];
        int64_t n_buckets = 0;
        for (int round = 0; round < kRounds; ++round) {
            for (int overlap = 0; overlap < 2; ++overlap) {
                dist::GradReducer reducer(params, comm, static_cast<size_t>(bucket_mb) << 20, overlap == 1);
                n_buckets = reducer.stats().n_buckets;
                for (int s = 0; s < 1 + kRoundSteps; ++s) {
                    const auto t0 = std::chrono::steady_clock::now();
                    reducer.prepare(true);
                    mlp->forward(x).square().mean().backward();
                    reducer.finalize();
                    const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
                    for (auto & p : params) p.mutable_grad() = torch::Tensor();
                    if (s == 0) continue;  // warm-up
                    step_ms[overlap].push_back(1e3 * dt);
                    wait_ms[overlap].push_back(1e3 * reducer.stats().wait_s_last);
                    share[overlap].push_back(reducer.stats().wait_s_last / dt);
                }
            }
        }
        for (int overlap = 0; overlap < 2; ++overlap)
            out << "bucket_mb=" << bucket_mb << " buckets=" << n_buckets << " overlap=" << overlap
                << " median step_ms=" << median(step_ms[overlap]) << " wait_ms=" << median(wait_ms[overlap])
                << " wait_share=" << median(share[overlap]) << " (n=" << share[overlap].size() << ")\n";
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
    } else if (mode == "two_backward") {
        two_backward(comm, out + "/two_backward" + tag);
    } else if (mode == "config_mismatch") {
        const std::string yaml = comm.rank() == 0 ? "train:\n  lr: 2e-5\n" : "train:\n  lr: 1e-3\n";
        dist::check_same_config(comm, dist::config_hash(yaml));
    } else if (mode == "bench") {
        bench(comm, out);
    } else {
        FAIL("unknown IDAMOE_DIST_MODE " << mode);
    }
}
