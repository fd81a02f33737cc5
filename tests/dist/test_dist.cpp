// [dist] tests: launch-environment rules, single-process Comm, and multi-process runs of the gradient
// reducer over Gloo (spawned ranks and mpirun), failure behaviour (dead / hung rank, config mismatch,
// inconsistent world size). The multi-process ones spawn test_dist_worker.cpp's hidden test case.
#include <catch2/catch.hpp>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <map>

#include "dist/comm.h"
#include "dist/global.h"
#include "dist/grad_reducer.h"
#include "dist/launch_env.h"
#include "dist_spawn.h"
#include "dist_toy.h"
#include "test_utils.h"

using namespace idamoe;
using test::TempDir;

namespace {

using Env = std::map<std::string, std::string>;

dist::LaunchEnv env_of(const Env & vars) {
    return dist::launch_env_from([&](const char * k) -> const char * {
        auto it = vars.find(k);
        return it == vars.end() ? nullptr : it->second.c_str();
    });
}

std::string error_of(const Env & vars) {
    try {
        env_of(vars);
    } catch (const std::exception & e) {
        return e.what();
    }
    return "";
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// One rank per child process via torchrun-style variables. Returns exit codes; logs in dir/log_rank<r>.txt.
struct RankRun {
    std::vector<int> rc;
    std::vector<double> seconds;
    std::vector<std::string> logs;
};
RankRun run_ranks(const TempDir & dir, const std::string & mode, int timeout_s, double deadline_s,
                  std::vector<int> world_sizes = {2, 2}) {
    const int port = test::free_port();
    std::vector<pid_t> pids;
    const auto t0 = std::chrono::steady_clock::now();
    for (size_t r = 0; r < world_sizes.size(); ++r) {
        Env env{{"RANK", std::to_string(r)},
                {"WORLD_SIZE", std::to_string(world_sizes[r])},
                {"LOCAL_RANK", std::to_string(r)},
                {"MASTER_ADDR", "127.0.0.1"},
                {"MASTER_PORT", std::to_string(port)},
                {"IDAMOE_DIST_MODE", mode},
                {"IDAMOE_DIST_OUT", dir.str()},
                {"IDAMOE_DIST_TIMEOUT", std::to_string(timeout_s)},
                {"OMP_NUM_THREADS", "1"}};
        pids.push_back(test::spawn_process({test::binary_path("idamoe_tests"), "[.dist-worker]"}, env,
                                           dir.str("log_rank" + std::to_string(r) + ".txt")));
    }
    RankRun out;
    for (size_t r = 0; r < pids.size(); ++r) {
        const double left = deadline_s - seconds_since(t0);
        out.rc.push_back(test::wait_process(pids[r], left > 0 ? left : 0.01));
        out.seconds.push_back(seconds_since(t0));
        out.logs.push_back(test::read_file(dir.str("log_rank" + std::to_string(r) + ".txt")));
    }
    return out;
}

// The single-process run whose batch at every micro-step is both ranks' micro-batches together.
std::vector<torch::Tensor> reference_params() {
    torch::manual_seed(100);  // rank 0's initialisation, which the reducer broadcasts
    test::ToyNet net;
    std::vector<torch::Tensor> params = test::toy_params(net);
    torch::optim::AdamW opt(net->parameters(), torch::optim::AdamWOptions(1e-2).weight_decay(0.01));
    for (int step = 0; step < test::kToySteps; ++step) {
        for (int m = 0; m < test::kToyAccum; ++m) {
            for (int r = 0; r < 2; ++r) {  // equal halves: mean over the joined batch = mean of half means
                auto [x, y] = test::toy_batch(step, m, r);
                torch::Tensor loss = torch::mse_loss(net->forward(x, test::toy_uses_expert(m, r)), y) /
                                     static_cast<double>(test::kToyAccum * 2);
                loss.backward();
            }
        }
        opt.step();
        for (auto & p : params) p.mutable_grad() = torch::Tensor();
    }
    return params;
}

// Every rank's final parameters against the reference: max relative error <= 1e-6 (float64 run; the
// observed error is ~1e-15, summation order only), and the ranks bit-identical to each other.
void check_against_reference(const TempDir & dir, const std::string & variant) {
    const std::vector<torch::Tensor> ref = reference_params();
    std::vector<std::vector<torch::Tensor>> ranks(2);
    for (int r = 0; r < 2; ++r) torch::load(ranks[r], dir.str("params_rank" + std::to_string(r) + "_" + variant + ".pt"));
    double worst_rel = 0;
    for (int r = 0; r < 2; ++r) {
        REQUIRE(ranks[r].size() == ref.size());
        for (size_t i = 0; i < ref.size(); ++i) {
            const double max_abs = (ranks[r][i] - ref[i]).abs().max().item<double>();
            const double max_rel = max_abs / std::max(ref[i].abs().max().item<double>(), 1e-30);
            INFO(variant << " rank " << r << " param #" << i << " max_abs " << max_abs << " max_rel " << max_rel);
            CHECK(max_rel <= 1e-6);
            worst_rel = std::max(worst_rel, max_rel);
            CHECK(torch::equal(ranks[r][i], ranks[0][i]));
        }
    }
    std::printf("[dist] %s: 2-rank params vs single-process reference after %d AdamW steps: max rel err %.3g\n",
                variant.c_str(), test::kToySteps, worst_rel);
    // The never-used parameter kept rank 0's initial value (its .grad stayed undefined, so AdamW skipped it);
    // the expert moved; the frozen scale is rank 0's.
    torch::manual_seed(100);
    test::ToyNet init;
    std::map<std::string, size_t> index;
    for (auto & np : init->named_parameters()) index.emplace(np.key(), index.size());
    CHECK(torch::equal(ranks[1][index.at("dead.weight")], init->dead->weight));
    CHECK_FALSE(torch::equal(ranks[1][index.at("expert.weight")], init->expert->weight));
    CHECK(torch::equal(ranks[1][index.at("scale")], init->scale));
}

}  // namespace

TEST_CASE("launch env: torchrun-style, Open MPI and PMI variables, single process needs none", "[dist]") {
    dist::LaunchEnv single = env_of({});
    CHECK(single.world_size == 1);
    CHECK(single.rank == 0);
    CHECK_FALSE(single.distributed());

    dist::LaunchEnv tr = env_of({{"RANK", "3"}, {"WORLD_SIZE", "8"}, {"LOCAL_RANK", "3"}, {"LOCAL_WORLD_SIZE", "8"},
                                 {"MASTER_ADDR", "10.0.0.5"}, {"MASTER_PORT", "29555"}});
    CHECK(tr.launcher == "env");
    CHECK(tr.rank == 3);
    CHECK(tr.world_size == 8);
    CHECK(tr.local_rank == 3);
    CHECK(tr.master_addr == "10.0.0.5");
    CHECK(tr.master_port == 29555);

    // mpirun on one node: MASTER_ADDR/PORT default to loopback:29500.
    dist::LaunchEnv mpi = env_of({{"OMPI_COMM_WORLD_RANK", "1"}, {"OMPI_COMM_WORLD_SIZE", "2"},
                                  {"OMPI_COMM_WORLD_LOCAL_RANK", "1"}, {"OMPI_COMM_WORLD_LOCAL_SIZE", "2"}});
    CHECK(mpi.launcher == "openmpi");
    CHECK(mpi.rank == 1);
    CHECK(mpi.world_size == 2);
    CHECK(mpi.local_rank == 1);
    CHECK(mpi.master_addr == "127.0.0.1");
    CHECK(mpi.master_port == dist::kDefaultMasterPort);
    CHECK_FALSE(mpi.multi_node);

    // Two nodes: rank 9 of 16 is local rank 1 of 8; without MASTER_ADDR that is an error naming the fix.
    Env two_nodes{{"OMPI_COMM_WORLD_RANK", "9"}, {"OMPI_COMM_WORLD_SIZE", "16"},
                  {"OMPI_COMM_WORLD_LOCAL_RANK", "1"}, {"OMPI_COMM_WORLD_LOCAL_SIZE", "8"}};
    CHECK_THAT(error_of(two_nodes), Catch::Contains("MASTER_ADDR is unset"));
    two_nodes["MASTER_ADDR"] = "host1";
    dist::LaunchEnv mn = env_of(two_nodes);
    CHECK(mn.multi_node);
    CHECK(mn.local_rank == 1);
    CHECK(mn.master_addr == "host1");

    dist::LaunchEnv pmi = env_of({{"PMI_RANK", "2"}, {"PMI_SIZE", "4"}});
    CHECK(pmi.launcher == "pmi");
    CHECK(pmi.rank == 2);
    CHECK(pmi.local_rank == 2);

    CHECK_THAT(error_of({{"RANK", "0"}}), Catch::Contains("WORLD_SIZE is not"));
    CHECK_THAT(error_of({{"WORLD_SIZE", "4"}}), Catch::Contains("RANK is unset"));
    CHECK_THAT(error_of({{"RANK", "4"}, {"WORLD_SIZE", "4"}}), Catch::Contains("not below world size"));
    CHECK_THAT(error_of({{"RANK", "x"}, {"WORLD_SIZE", "4"}}), Catch::Contains("RANK='x'"));
    CHECK_THAT(error_of({{"RANK", "0"}, {"WORLD_SIZE", "2"}, {"MASTER_PORT", "70000"}}),
               Catch::Contains("not a TCP port"));
}

TEST_CASE("comm: world size 1 communicates nothing, nccl is refused without CUDA", "[dist]") {
    core::DistConfig cfg;
    dist::Comm comm(cfg, dist::LaunchEnv{});
    CHECK(comm.world_size() == 1);
    CHECK(comm.backend() == "none");
    torch::Tensor t = torch::tensor({1.0, 2.0});
    CHECK(torch::equal(dist::all_reduce_sum(comm, t), t));
    CHECK(dist::all_reduce_sum(comm, std::vector<double>{3.0}) == std::vector<double>{3.0});
    CHECK(comm.broadcast_bytes("abc") == "abc");
    dist::check_same_config(comm, dist::config_hash("x"));
    comm.barrier();

    // The reducer leaves single-process gradients exactly as autograd made them.
    torch::Tensor w = torch::tensor({1.0, -2.0}).requires_grad_(true);
    dist::GradReducer reducer({w}, comm, 1 << 20, true);
    reducer.prepare(true);
    (w * w).sum().backward();
    reducer.finalize();
    CHECK(torch::equal(w.grad(), torch::tensor({2.0, -4.0})));

    CHECK(dist::config_hash("a") != dist::config_hash("b"));
    CHECK(dist::config_hash("") == "cbf29ce484222325");  // FNV-1a 64 offset basis: the empty string's hash

#ifndef IDAMOE_WITH_NCCL
    cfg.backend = "nccl";
    CHECK_THROWS_WITH(dist::Comm(cfg, dist::LaunchEnv{}), Catch::Contains("no CUDA/NCCL support"));
#endif
    cfg.backend = "mpi";
    CHECK_THROWS_WITH(dist::Comm(cfg, dist::LaunchEnv{}), Catch::Contains("auto|gloo|nccl"));
}

TEST_CASE("GradReducer: 2 Gloo ranks train like one process on the joined batch", "[dist]") {
    TempDir dir;
    RankRun run = run_ranks(dir, "train", 20, 60);
    for (int r = 0; r < 2; ++r) {
        INFO("rank " << r << " log:\n" << run.logs[r]);
        REQUIRE(run.rc[r] == 0);
    }
    check_against_reference(dir, "overlap");
    check_against_reference(dir, "post");
    // Expert loads [1,10] + [2,20]; host sums 0.5 + 1.0 and 1 + 1; rank 0's resume state everywhere.
    for (int r = 0; r < 2; ++r)
        CHECK(test::read_file(dir.str("metrics_rank" + std::to_string(r) + ".txt")) == "3 30 1.5 2 {\"step\":7}\n");
}

TEST_CASE("GradReducer: the same under mpirun (Open MPI variables, no MASTER_* set)", "[dist]") {
    TempDir dir;
    const int port = test::free_port();
    const auto t0 = std::chrono::steady_clock::now();
    pid_t pid = test::spawn_process(
        {"mpirun", "--allow-run-as-root", "--oversubscribe", "-np", "2", "-x", "MASTER_PORT=" + std::to_string(port),
         "-x", "IDAMOE_DIST_MODE=train", "-x", "IDAMOE_DIST_OUT=" + dir.str(), "-x", "IDAMOE_DIST_TIMEOUT=20", "-x",
         "OMP_NUM_THREADS=1", test::binary_path("idamoe_tests"), "[.dist-worker]"},
        {}, dir.str("mpirun_log.txt"));
    const int rc = test::wait_process(pid, 60);
    INFO("mpirun (from openmpi-bin) log:\n" << test::read_file(dir.str("mpirun_log.txt")));
    REQUIRE(rc == 0);
    INFO("took " << seconds_since(t0) << " s");
    check_against_reference(dir, "overlap");
    check_against_reference(dir, "post");
}

TEST_CASE("GradReducer: several backward() calls in the sync micro-step", "[dist]") {
    TempDir dir;
    RankRun run = run_ranks(dir, "two_backward", 20, 60);
    for (int r = 0; r < 2; ++r) {
        INFO("rank " << r << " log:\n" << run.logs[r]);
        REQUIRE(run.rc[r] == 0);
    }
    // Reference: one process, both ranks' micro-batches, both losses, averaged over the 2 ranks.
    torch::manual_seed(100);
    test::ToyNet net;
    std::vector<torch::Tensor> params = test::toy_params(net);
    for (int r = 0; r < 2; ++r) {
        auto [x, y] = test::toy_batch(0, 0, r);
        torch::Tensor loss = torch::mse_loss(net->forward(x, false), y) + net->l1(x).square().mean();
        (loss / 2.0).backward();
    }
    for (int r = 0; r < 2; ++r) {
        std::vector<torch::Tensor> grads;
        torch::load(grads, dir.str("two_backward_rank" + std::to_string(r) + "_grads.pt"));
        REQUIRE(grads.size() == params.size());
        for (size_t i = 0; i < params.size(); ++i) {
            if (!params[i].grad().defined()) {  // frozen scale, unused expert and dead layer: still unset
                CHECK(grads[i].numel() == 1);
                continue;
            }
            const torch::Tensor & ref = params[i].grad();
            const double max_abs = (grads[i] - ref).abs().max().item<double>();
            const double max_rel = max_abs / std::max(ref.abs().max().item<double>(), 1e-30);
            INFO("rank " << r << " grad #" << i << " max_abs " << max_abs << " max_rel " << max_rel);
            CHECK(max_rel <= 1e-12);  // one step, float64: only summation order differs
        }
        CHECK_THAT(test::read_file(dir.str("two_backward_rank" + std::to_string(r) + "_error.txt")),
                   Catch::Contains("got another gradient after its bucket was already all-reduced"));
    }
}

TEST_CASE("failure: a rank that dies mid-training makes the other exit with a clear error", "[dist]") {
    TempDir dir;
    constexpr int kTimeout = 5;
    RankRun run = run_ranks(dir, "exit_early", kTimeout, 40);
    INFO("rank 0 log:\n" << run.logs[0] << "\nrank 0 took " << run.seconds[0] << " s");
    CHECK(run.rc[1] == 7);  // the deliberate std::_Exit(7)
    CHECK(run.rc[0] != 0);
    CHECK(run.rc[0] != -1);  // -1: it had to be killed, i.e. it hung
    CHECK_THAT(run.logs[0], Catch::Contains("gradient all-reduce of bucket") &&
                                Catch::Contains("Another rank has probably died or hung"));
    CHECK(run.seconds[0] < kTimeout + 12.0);  // start-up and 3 steps, then at most the timeout
}

TEST_CASE("failure: a rank that hangs makes the other time out after dist.timeout_s", "[dist]") {
    TempDir dir;
    constexpr int kTimeout = 5;
    const auto t0 = std::chrono::steady_clock::now();
    const int port = test::free_port();
    std::vector<pid_t> pids;
    for (int r = 0; r < 2; ++r)
        pids.push_back(test::spawn_process(
            {test::binary_path("idamoe_tests"), "[.dist-worker]"},
            {{"RANK", std::to_string(r)}, {"WORLD_SIZE", "2"}, {"MASTER_ADDR", "127.0.0.1"},
             {"MASTER_PORT", std::to_string(port)}, {"IDAMOE_DIST_MODE", "hang"}, {"IDAMOE_DIST_OUT", dir.str()},
             {"IDAMOE_DIST_TIMEOUT", std::to_string(kTimeout)}, {"OMP_NUM_THREADS", "1"}},
            dir.str("log_rank" + std::to_string(r) + ".txt")));
    const int rc0 = test::wait_process(pids[0], 40);
    const double took = seconds_since(t0);
    test::wait_process(pids[1], 0.01);  // the sleeping rank: ours to kill
    const std::string log0 = test::read_file(dir.str("log_rank0.txt"));
    INFO("rank 0 log:\n" << log0 << "\nrank 0 took " << took << " s");
    CHECK(rc0 != 0);
    CHECK(rc0 != -1);
    CHECK_THAT(log0, Catch::Contains("within the timeout of 5") && Catch::Contains("died or hung"));
    CHECK(took >= kTimeout);
    CHECK(took < kTimeout + 12.0);
}

TEST_CASE("failure: ranks with different configs are refused, naming both hashes", "[dist]") {
    TempDir dir;
    RankRun run = run_ranks(dir, "config_mismatch", 10, 40);
    const std::string h0 = dist::config_hash("train:\n  lr: 2e-5\n");
    const std::string h1 = dist::config_hash("train:\n  lr: 1e-3\n");
    for (int r = 0; r < 2; ++r) {
        INFO("rank " << r << " log:\n" << run.logs[r]);
        CHECK(run.rc[r] != 0);
        CHECK(run.rc[r] != -1);
        CHECK_THAT(run.logs[r], Catch::Contains("config mismatch: rank 1 has config hash " + h1 + " but rank 0 has " + h0));
    }
}

TEST_CASE("failure: inconsistent world size is named", "[dist]") {
    TempDir dir;
    RankRun run = run_ranks(dir, "config_mismatch", 5, 40, {2, 3});
    INFO("rank 0 log:\n" << run.logs[0] << "\nrank 1 log:\n" << run.logs[1]);
    CHECK(run.rc[0] != 0);
    CHECK(run.rc[1] != 0);
    CHECK(run.rc[1] != -1);
    CHECK_THAT(run.logs[0], Catch::Contains("inconsistent world size: rank 0 has 2, rank 1 has 3"));
}

TEST_CASE("failure: an unreachable rendezvous store is named with its address and port", "[dist]") {
    TempDir dir;
    const int port = test::free_port();  // nobody serves it: rank 0 is never started
    const auto t0 = std::chrono::steady_clock::now();
    pid_t pid = test::spawn_process({test::binary_path("idamoe_tests"), "[.dist-worker]"},
                                    {{"RANK", "1"}, {"WORLD_SIZE", "2"}, {"MASTER_ADDR", "127.0.0.1"},
                                     {"MASTER_PORT", std::to_string(port)}, {"IDAMOE_DIST_MODE", "train"},
                                     {"IDAMOE_DIST_OUT", dir.str()}, {"IDAMOE_DIST_TIMEOUT", "3"}},
                                    dir.str("log_rank1.txt"));
    const int rc = test::wait_process(pid, 30);
    const std::string log = test::read_file(dir.str("log_rank1.txt"));
    INFO("rank 1 log:\n" << log << "\ntook " << seconds_since(t0) << " s");
    CHECK(rc != 0);
    CHECK(rc != -1);
    CHECK_THAT(log, Catch::Contains("rank 1 could not connect to the rendezvous store at 127.0.0.1:" +
                                    std::to_string(port) + " within 3 s"));
}

// Not part of the suite: `idamoe_tests "[.dist-bench]"` prints the all-reduce wait share, overlap off vs on.
TEST_CASE("bench: share of step time waiting on gradient all-reduce, 2 Gloo ranks on CPU", "[.dist-bench]") {
    TempDir dir;
    RankRun run = run_ranks(dir, "bench", 60, 300);
    for (int r = 0; r < 2; ++r) {
        INFO("rank " << r << " log:\n" << run.logs[r]);
        REQUIRE(run.rc[r] == 0);
        std::printf("rank %d:\n%s", r, test::read_file(dir.str("bench_rank" + std::to_string(r) + ".txt")).c_str());
    }
}
