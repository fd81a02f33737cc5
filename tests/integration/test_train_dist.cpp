// idamoe-train itself (the binary, not the library) in data-parallel and interrupted runs, on the demo's
// tiny world (gen-shapes-dataset + train-bpe-tokenizer + make-tiny-models, stages 1 and 2 run briefly so
// that stage 3 upcycles into IDA-MoE experts with warmed-up routers):
//   - stage 3 on 2 Gloo ranks, launched by mpirun and by torchrun-style variables, ends with the weights
//     of one process trained on the joined batch (the global-batch loss normalisation, train/loss.h);
//   - 2 ranks stopped half-way and resumed end bit-equal to 2 ranks run straight (per-rank sampler and
//     RNG state), and resuming with another number of ranks is refused with the reason;
//   - a process SIGKILLed while writing a checkpoint resumes from the previous complete one, its temporary
//     folder is cleaned, and the run ends bit-equal to an uninterrupted one;
//   - launch mistakes seen by the binary: different configs per rank, multi-node mpirun without MASTER_ADDR.
#include "../dist/dist_spawn.h"
#include "io/checkpoint.h"
#include "test_utils.h"

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <string>
#include <thread>
#include <vector>

using namespace idamoe;
namespace fs = std::filesystem;
using test::TempDir;

namespace {

using Env = std::map<std::string, std::string>;

const std::string kDemoConfigs = (fs::path(IDAMOE_TEST_FIXTURES).parent_path().parent_path() / "configs/demo").string();

// Runs argv to completion with its output in log; returns the exit status (128+signal, -1 if it had to be killed).
int run_logged(const std::vector<std::string> & argv, const Env & env, const std::string & log, double deadline_s = 120) {
    return test::wait_process(test::spawn_process(argv, env, log), deadline_s);
}

struct World {
    TempDir dir;
    Env env;  // what every idamoe-train of this world runs with
};

std::vector<std::string> train_argv(const World & w, const std::string & stage_yaml, const std::vector<std::string> & sets,
                                    const std::string & resume = "") {
    std::vector<std::string> a = {test::binary_path("idamoe-train"), "--config", kDemoConfigs + "/" + stage_yaml};
    if (!resume.empty()) {
        a.push_back("--resume");
        a.push_back(resume);
    }
    a.push_back("--set");
    for (const auto & s : sets) a.push_back(s);
    return a;
}

// The demo world, small: 48 stage-3 records (40 image QA + 8 text-only), stage 1 and 2 two steps each.
void make_world(World & w) {
    const std::string d = w.dir.str();
    w.env = {{"IDAMOE_DEMO_DIR", d}, {"OMP_NUM_THREADS", "1"}};
    auto tool = [&](const std::vector<std::string> & argv, const std::string & log) {
        const int rc = run_logged(argv, w.env, w.dir.str(log));
        INFO(test::read_file(w.dir.str(log)));
        REQUIRE(rc == 0);
    };
    tool({test::binary_path("gen-shapes-dataset"), "--out", d + "/data", "--seed", "5", "--n-caption", "8", "--n-instruct",
          "40", "--n-text", "8", "--n-eval", "2", "--image-size", "56"}, "gen.log");
    tool({test::binary_path("train-bpe-tokenizer"), "--corpus", d + "/data/corpus.txt", "--vocab-size", "512", "--out",
          d + "/tok.json"}, "bpe.log");
    // init 0.02 (not the demo's 1/sqrt(width)): in this world some expert then gets no tokens on one rank
    // in some step, the case the equality test below must cover
    tool({test::binary_path("make-tiny-models"), "--tokenizer", d + "/tok.json", "--out", d + "/models", "--llm-init-std",
          "0.02"}, "models.log");
    const std::vector<std::string> quick = {"train.max_steps=2", "data.batch_size=4", "data.num_workers=0", "logging.level=warn"};
    tool(train_argv(w, "stage1.yaml", quick), "stage1.log");
    std::vector<std::string> quick2 = quick;
    // no presence phase in a 2-step stage 2; lr 2e-3 (the demo's before it had the phase) keeps the
    // stage-2 model in which some expert gets no tokens on one rank, the case the test below needs
    quick2.push_back("data.curriculum=[]");
    quick2.push_back("train.lr=2.0e-3");
    tool(train_argv(w, "stage2.yaml", quick2), "stage2.log");
}

// Stage-3 overrides: IDA-MoE, dropless (capacity depends on the batch a rank holds, so drops would differ
// from one process's), fp32, one loader thread in the caller (no timing in the data order).
std::vector<std::string> stage3_sets(const std::string & out, int64_t batch, int64_t steps, std::vector<std::string> extra = {}) {
    std::vector<std::string> s = {"train.output_dir=" + out, "train.max_steps=" + std::to_string(steps),
                                  "data.batch_size=" + std::to_string(batch), "data.num_workers=0", "logging.level=warn",
                                  "moe.router=ida", "moe.capacity_factor=0.0", "model.dtype=float32", "model.device=cpu",
                                  "dist.timeout_s=60", "checkpoint.save_optimizer=true", "checkpoint.keep_last=100",
                                  // the paper's single lr: the demo's 10x GMM step multiplies fp32 summation-order
                                  // noise in the mixing logits 10x (3.2e-7 -> 3.5e-6 normwise), past the bound
                                  // that was set against that noise (see the equality test)
                                  "train.gmm_lr_scale=1"};
    s.insert(s.end(), extra.begin(), extra.end());
    return s;
}

// torchrun-style: one process per rank with RANK/WORLD_SIZE/LOCAL_RANK/LOCAL_WORLD_SIZE/MASTER_*.
std::vector<int> run_ranks(const World & w, const std::vector<std::string> & argv, const std::string & tag, int n = 2,
                           std::vector<std::vector<std::string>> per_rank_argv = {}) {
    const int port = test::free_port();
    std::vector<pid_t> pids;
    for (int r = 0; r < n; ++r) {
        Env env = w.env;
        env.insert({{"RANK", std::to_string(r)}, {"WORLD_SIZE", std::to_string(n)}, {"LOCAL_RANK", std::to_string(r)},
                    {"LOCAL_WORLD_SIZE", std::to_string(n)}, {"MASTER_ADDR", "127.0.0.1"}, {"MASTER_PORT", std::to_string(port)}});
        pids.push_back(test::spawn_process(per_rank_argv.empty() ? argv : per_rank_argv[static_cast<size_t>(r)], env,
                                           w.dir.str(tag + "_rank" + std::to_string(r) + ".log")));
    }
    std::vector<int> rc;
    for (pid_t p : pids) rc.push_back(test::wait_process(p, 180));
    return rc;
}

std::string rank_logs(const World & w, const std::string & tag, int n = 2) {
    std::string out;
    for (int r = 0; r < n; ++r)
        out += "--- " + tag + " rank " + std::to_string(r) + ":\n" + test::read_file(w.dir.str(tag + "_rank" + std::to_string(r) + ".log"));
    return out;
}

std::string ckpt(const std::string & out, int64_t step) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "checkpoint-%08lld", static_cast<long long>(step));
    return (fs::path(out) / buf).string();
}

// Relative differences of two weight sets, worst tensor for each of two measures: normwise
// ||a-b||_2 / ||ref||_2 and elementwise max|a-b| / max|ref| (the GradReducer tests' measure). Integer
// tensors (router step counters) must match exactly.
//
// Why the normwise one carries the 1e-6 bound: fp32 summation order alone (one process run with 1 vs 2
// OpenMP threads, same data) moves the GMM mixing logits by ~1.0e-6 elementwise-relative after 10 steps.
// Their gradient sum_t (posterior - pi) / T cancels almost completely, so its rounding error is large
// relative to itself, Adam passes it on undamped, and the logits (init 0) stay ~3e-3 in size. Normwise
// the same re-run differs by 3e-7. The elementwise measure is bounded at 1e-5; the loss-normalisation bug
// this test guards against moved the router weights by 6e-2.
struct RelDiff {
    double norm = 0, max = 0;
    std::string norm_name, max_name;
};
RelDiff rel_diff(const io::TensorMap & ref, const io::TensorMap & got) {
    REQUIRE(ref.size() == got.size());
    RelDiff d;
    for (const auto & [name, r] : ref) {
        REQUIRE(got.count(name));
        const torch::Tensor & g = got.at(name);
        REQUIRE(g.sizes() == r.sizes());
        if (!r.is_floating_point()) {
            INFO(name);
            CHECK(torch::equal(r, g));
            continue;
        }
        const torch::Tensor rd = r.to(torch::kDouble), diff = g.to(torch::kDouble) - rd;
        const double norm = diff.norm().item<double>() / std::max(rd.norm().item<double>(), 1e-30);
        const double max = diff.abs().max().item<double>() / std::max(rd.abs().max().item<double>(), 1e-30);
        if (norm > d.norm) d.norm = norm, d.norm_name = name;
        if (max > d.max) d.max = max, d.max_name = name;
    }
    return d;
}

void check_close(const RelDiff & d, const std::string & what) {
    std::printf("[dist] idamoe-train stage 3, %s vs 1 process on the joined batch, 10 fp32 steps: max rel diff "
                "normwise %.3g (%s), elementwise %.3g (%s)\n", what.c_str(), d.norm, d.norm_name.c_str(), d.max,
                d.max_name.c_str());
    INFO(what << ": normwise " << d.norm << " (" << d.norm_name << "), elementwise " << d.max << " (" << d.max_name << ")");
    CHECK(d.norm <= 1e-6);
    CHECK(d.max <= 1e-5);
}

bool have_mpirun() { return std::system("command -v mpirun > /dev/null 2>&1") == 0; }

}  // namespace

TEST_CASE("idamoe-train stage 3 (IDA-MoE) on 2 Gloo ranks, under mpirun and torchrun variables, equals one process "
          "on the joined batch", "[train][dist][integration]") {
    World w;
    make_world(w);
    constexpr int64_t kSteps = 10;
    // One process with both ranks' micro-batches in one batch: the loader deals micro-batch k to rank k % 2,
    // so with grad_accum 1 step j of one process at batch 4 holds exactly ranks 0 and 1's batches of 2.
    const std::string single = w.dir.str("single");
    REQUIRE(run_logged(train_argv(w, "stage3.yaml", stage3_sets(single, 4, kSteps)), w.env, w.dir.str("single.log")) == 0);
    const io::TensorMap ref = io::load_checkpoint(ckpt(single, kSteps)).model;

    const std::string tr = w.dir.str("torchrun");
    const std::vector<int> rc = run_ranks(
        w, train_argv(w, "stage3.yaml", stage3_sets(tr, 2, kSteps, {"logging.all_ranks=true", "logging.level=info"})), "torchrun");
    INFO(rank_logs(w, "torchrun"));
    REQUIRE(rc == std::vector<int>{0, 0});
    const io::TensorMap got_tr = io::load_checkpoint(ckpt(tr, kSteps)).model;
    check_close(rel_diff(ref, got_tr), "2 ranks (torchrun variables)");
    // Stage 3 really had routed experts and IDA routers in the compared weights.
    bool experts = false, gmm = false;
    for (const auto & kv : ref) {
        experts = experts || kv.first.find(".mlp.experts.3.") != std::string::npos;
        gmm = gmm || kv.first.find(".mlp.router.gmm.") != std::string::npos;
    }
    CHECK(experts);
    CHECK(gmm);
    // The hard case: some expert got no tokens on one rank (its gradient entered the all-reduce as zeros
    // there, while the single process got it from the other rank's tokens). Deterministic for this world.
    int ranks_with_idle_experts = 0;
    for (int r = 0; r < 2; ++r)
        ranks_with_idle_experts += test::read_file(w.dir.str("torchrun_rank" + std::to_string(r) + ".log"))
                                       .find("without a gradient on this rank") != std::string::npos;
    std::printf("[dist] ranks on which some trainable tensor (expert) got no gradient in some step: %d of 2\n",
                ranks_with_idle_experts);
    CHECK(ranks_with_idle_experts > 0);

    if (!have_mpirun()) {
        WARN("mpirun not found (Debian: openmpi-bin): the mpirun launch of idamoe-train was NOT tested");
        return;
    }
    const std::string mpi = w.dir.str("mpirun");
    std::vector<std::string> argv = {"mpirun", "--allow-run-as-root", "--oversubscribe", "--bind-to", "none", "-np", "2",
                                     "-x", "MASTER_PORT=" + std::to_string(test::free_port()), "-x", "OMP_NUM_THREADS=1",
                                     "-x", "IDAMOE_DEMO_DIR=" + w.dir.str()};
    for (const auto & a : train_argv(w, "stage3.yaml", stage3_sets(mpi, 2, kSteps))) argv.push_back(a);
    const int mrc = run_logged(argv, {}, w.dir.str("mpirun.log"), 180);
    INFO("mpirun log:\n" << test::read_file(w.dir.str("mpirun.log")));
    REQUIRE(mrc == 0);
    const io::TensorMap got_mpi = io::load_checkpoint(ckpt(mpi, kSteps)).model;
    check_close(rel_diff(ref, got_mpi), "2 ranks (mpirun)");
    // Same ranks, same data, other launcher. Bit-identical in most runs, but not in all: under load (ctest
    // -j2) and in the ASan build the two launches were seen to differ by fp32 rounding in the GMM mixing
    // logits, each within the bound against one process above. The timing-dependent source is not found
    // yet (noted on the issue), so the check is the bound, not the bits.
    check_close(rel_diff(got_tr, got_mpi), "mpirun vs torchrun");
}

TEST_CASE("idamoe-train on 2 ranks: stop half-way + resume equals a straight run bit for bit, every rank's "
          "sampler and RNG state is saved, another world size and mismatched configs are refused",
          "[train][dist][integration]") {
    World w;
    make_world(w);
    constexpr int64_t kSteps = 6;
    const std::string a = w.dir.str("straight"), b = w.dir.str("split");
    std::vector<int> rc = run_ranks(w, train_argv(w, "stage3.yaml", stage3_sets(a, 2, kSteps)), "straight");
    INFO(rank_logs(w, "straight"));
    REQUIRE(rc == std::vector<int>{0, 0});
    rc = run_ranks(w, train_argv(w, "stage3.yaml", stage3_sets(b, 2, kSteps, {"train.stop_after=3"})), "first");
    INFO(rank_logs(w, "first"));
    REQUIRE(rc == std::vector<int>{0, 0});

    // The half-way checkpoint holds both ranks' positions and RNG states.
    const io::CheckpointData half = io::load_checkpoint(ckpt(b, 3));
    REQUIRE(half.trainer_state.at("world_size") == 2);
    REQUIRE(half.trainer_state.at("samplers").size() == 2);
    for (int r = 0; r < 2; ++r) {
        CHECK(half.trainer_state["samplers"][r].at("rank") == r);
        CHECK(half.trainer_state["samplers"][r].at("offset") == 3);
        CHECK(half.rng.count("rank" + std::to_string(r) + "/cpu"));
    }

    // Resuming on 1 process is refused, with why (exit 2: incompatible resume).
    const int one = run_logged(train_argv(w, "stage3.yaml", stage3_sets(b, 2, kSteps), "auto"), w.env, w.dir.str("one.log"));
    const std::string one_log = test::read_file(w.dir.str("one.log"));
    INFO(one_log);
    CHECK(one == 2);
    CHECK_THAT(one_log, Catch::Contains("it was written by a run with 2") && Catch::Contains("cannot be remapped"));

    rc = run_ranks(w, train_argv(w, "stage3.yaml", stage3_sets(b, 2, kSteps), "auto"), "second");
    INFO(rank_logs(w, "second"));
    REQUIRE(rc == std::vector<int>{0, 0});
    CHECK(test::read_file(ckpt(a, kSteps) + "/model.safetensors") == test::read_file(ckpt(b, kSteps) + "/model.safetensors"));
    CHECK(test::read_file(ckpt(a, kSteps) + "/optimizer.safetensors") == test::read_file(ckpt(b, kSteps) + "/optimizer.safetensors"));
    CHECK(test::read_file(a + "/hf/model.safetensors") == test::read_file(b + "/hf/model.safetensors"));

    // Ranks that load different configs refuse to start, naming the hashes (through the binary).
    const std::string c = w.dir.str("mismatch");
    rc = run_ranks(w, {}, "mismatch", 2,
                   {train_argv(w, "stage3.yaml", stage3_sets(c, 2, kSteps, {"train.lr=1e-3"})),
                    train_argv(w, "stage3.yaml", stage3_sets(c, 2, kSteps, {"train.lr=2e-3"}))});
    INFO(rank_logs(w, "mismatch"));
    for (int r = 0; r < 2; ++r) {
        CHECK(rc[static_cast<size_t>(r)] != 0);
        CHECK(rc[static_cast<size_t>(r)] != -1);
        CHECK_THAT(test::read_file(w.dir.str("mismatch_rank" + std::to_string(r) + ".log")),
                   Catch::Contains("config mismatch: rank 1 has config hash"));
    }

    // Open MPI variables saying 2 nodes, without MASTER_ADDR: refused before any rendezvous.
    Env mn = w.env;
    mn.insert({{"OMPI_COMM_WORLD_RANK", "1"}, {"OMPI_COMM_WORLD_SIZE", "4"}, {"OMPI_COMM_WORLD_LOCAL_RANK", "1"},
               {"OMPI_COMM_WORLD_LOCAL_SIZE", "2"}});
    const int mrc = run_logged(train_argv(w, "stage3.yaml", stage3_sets(w.dir.str("mn"), 2, kSteps)), mn, w.dir.str("mn.log"), 60);
    const std::string mn_log = test::read_file(w.dir.str("mn.log"));
    INFO(mn_log);
    CHECK(mrc != 0);
    CHECK(mrc != -1);
    CHECK_THAT(mn_log, Catch::Contains("MASTER_ADDR is unset"));
}

TEST_CASE("idamoe-train SIGKILLed while writing a checkpoint: --resume auto takes the previous one, cleans the "
          "leftover and ends bit-equal to an uninterrupted run", "[train][integration]") {
    World w;
    make_world(w);
    constexpr int64_t kSteps = 6;
    const std::string a = w.dir.str("uninterrupted"), b = w.dir.str("killed");
    const std::vector<std::string> extra = {"train.save_every=2"};
    REQUIRE(run_logged(train_argv(w, "stage3.yaml", stage3_sets(a, 2, kSteps, extra)), w.env, w.dir.str("a.log")) == 0);

    // The save of step 4 stops after writing model.safetensors into checkpoint-00000004.tmp and waits.
    Env env = w.env;
    const std::string marker = w.dir.str("paused_in_save");
    env["IDAMOE_TEST_PAUSE_IN_SAVE"] = "4:" + marker;
    const pid_t pid = test::spawn_process(train_argv(w, "stage3.yaml", stage3_sets(b, 2, kSteps, extra)), env, w.dir.str("b1.log"));
    const auto t0 = std::chrono::steady_clock::now();
    while (!fs::exists(marker) && std::chrono::steady_clock::now() - t0 < std::chrono::seconds(120)) {
        int status = 0;
        if (::waitpid(pid, &status, WNOHANG) == pid) FAIL("idamoe-train exited before the save hook: " << test::read_file(w.dir.str("b1.log")));
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    const bool paused = fs::exists(marker);
    ::kill(pid, SIGKILL);
    const int status = test::wait_process(pid, 30);
    INFO(test::read_file(w.dir.str("b1.log")));
    REQUIRE(paused);
    CHECK(status == 128 + SIGKILL);
    // What the kill left: a complete step-2 checkpoint named by `latest`, a half-written step-4 temp folder.
    CHECK(fs::exists(ckpt(b, 4) + ".tmp/model.safetensors"));
    CHECK_FALSE(fs::exists(ckpt(b, 4) + ".tmp/manifest.json"));
    CHECK_FALSE(fs::exists(ckpt(b, 4)));
    CHECK(test::read_file(b + "/latest") == "checkpoint-00000002\n");
    CHECK(io::resolve_resume(b, "auto") == ckpt(b, 2));

    REQUIRE(run_logged(train_argv(w, "stage3.yaml", stage3_sets(b, 2, kSteps, extra), "auto"), w.env, w.dir.str("b2.log")) == 0);
    const std::string b2 = test::read_file(w.dir.str("b2.log"));
    INFO(b2);
    CHECK_THAT(b2, Catch::Contains("left by an interrupted save"));
    CHECK_FALSE(fs::exists(ckpt(b, 4) + ".tmp"));
    for (int64_t step : {4, 6}) {
        INFO("step " << step);
        CHECK(io::verify_checkpoint(ckpt(b, step)).empty());
        CHECK(test::read_file(ckpt(a, step) + "/model.safetensors") == test::read_file(ckpt(b, step) + "/model.safetensors"));
    }
    CHECK(test::read_file(a + "/hf/model.safetensors") == test::read_file(b + "/hf/model.safetensors"));
}
