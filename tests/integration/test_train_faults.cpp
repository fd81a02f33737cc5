// Fault injection through the real idamoe-train binary (issue #9), on the demo tools' tiny world
// (gen-shapes-dataset, train-bpe-tokenizer, make-tiny-models) in stage 1:
//   - SIGKILL between checkpoints, then --resume auto, equals an uninterrupted run bit for bit;
//   - 5% undecodable / missing images: the run completes and reports exactly that many skipped samples;
//   - a file-size limit (RLIMIT_FSIZE, as a full disk) while saving: the previous checkpoint stays
//     valid, the messages say so, and a later --resume auto finishes the run;
//   - data.curriculum: the phase's files come first, and stopping inside the phase or after it, then
//     resuming, equals a straight run.
// (A kill -9 *during* a checkpoint write is covered on its own with the distributed tests.)
#include "io/checkpoint.h"
#include "train/schedule.h"

#include "test_utils.h"

#include <catch2/catch.hpp>

#include <nlohmann/json.hpp>

#include <chrono>
#include <csignal>
#include <cstdlib>
#include <fcntl.h>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <sys/resource.h>
#include <sys/wait.h>
#include <thread>
#include <unistd.h>

extern char ** environ;

using namespace idamoe;
using idamoe::test::read_file;
namespace fs = std::filesystem;

namespace {

// Both files exist, are non-empty and hold the same bytes (without printing megabytes on failure).
bool same_bytes(const std::string & a, const std::string & b) {
    const std::string x = read_file(a), y = read_file(b);
    INFO(a << ": " << x.size() << " bytes, " << b << ": " << y.size() << " bytes");
    REQUIRE(!x.empty());
    return x == y;
}

int sh(const std::string & cmd) {
    INFO("command: " << cmd);
    return std::system((cmd + " > /dev/null 2>&1").c_str());
}

// Starts idamoe-train with `args`, stdout+stderr appended to `log`, one OpenMP thread (the bit-exact
// comparisons need the same reduction order in every run) and an optional file-size limit.
// Everything the child needs is prepared before fork(): the parent has LibTorch threads.
pid_t spawn_train(const std::vector<std::string> & args, const std::string & log, rlim_t fsize_limit = RLIM_INFINITY) {
    std::vector<std::string> argv_s = {test::binary_path("idamoe-train")};
    argv_s.insert(argv_s.end(), args.begin(), args.end());
    std::vector<char *> argv;
    for (auto & a : argv_s) argv.push_back(a.data());
    argv.push_back(nullptr);
    std::vector<std::string> env_s = {"OMP_NUM_THREADS=1"};
    for (char ** e = environ; *e; ++e)
        if (std::string(*e).rfind("OMP_NUM_THREADS=", 0) != 0) env_s.emplace_back(*e);
    std::vector<char *> envp;
    for (auto & e : env_s) envp.push_back(e.data());
    envp.push_back(nullptr);
    const int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    REQUIRE(fd >= 0);
    const pid_t pid = ::fork();
    if (pid == 0) {
        ::dup2(fd, 1);
        ::dup2(fd, 2);
        if (fsize_limit != RLIM_INFINITY) {
            rlimit r{fsize_limit, fsize_limit};
            ::setrlimit(RLIMIT_FSIZE, &r);
        }
        ::execve(argv[0], argv.data(), envp.data());
        ::_exit(127);
    }
    ::close(fd);
    REQUIRE(pid > 0);
    return pid;
}

// Exit code, or 128 + signal number when the child was killed.
int wait_child(pid_t pid) {
    int status = 0;
    while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {}
    if (WIFEXITED(status)) return WEXITSTATUS(status);
    if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
    return -1;
}

int run_train(const std::vector<std::string> & args, const std::string & log, rlim_t fsize_limit = RLIM_INFINITY) {
    return wait_child(spawn_train(args, log, fsize_limit));
}

// The demo's tiny world: n_caption stage-1 caption samples with 56 px PNG images, a 512-token BPE
// tokenizer, a 16-patch CLIP-style tower and a Qwen2-style decoder.
struct TinyWorld {
    test::TempDir dir;
    explicit TinyWorld(int n_caption) {
        REQUIRE(sh(test::binary_path("gen-shapes-dataset") + " --out " + dir.str("data") + " --seed 5 --n-caption " +
                   std::to_string(n_caption) + " --n-instruct 8 --n-text 8 --n-eval 4 --image-size 56") == 0);
        REQUIRE(sh(test::binary_path("train-bpe-tokenizer") + " --corpus " + dir.str("data/corpus.txt") +
                   " --vocab-size 512 --out " + dir.str("tokenizer.json")) == 0);
        REQUIRE(sh(test::binary_path("make-tiny-models") + " --tokenizer " + dir.str("tokenizer.json") + " --out " +
                   dir.str("models")) == 0);
    }
    // A stage-1 config (projector only) writing to `out`; every step logged, all checkpoints kept.
    std::string config(const std::string & name, const std::string & out, int64_t steps, int64_t save_every,
                       int64_t batch, const std::string & json = "", const std::string & curriculum = "") const {
        std::ostringstream y;
        y << "model:\n  llm_path: " << dir.str("models/tiny-qwen2") << "\n  dtype: float32\n  device: cpu\n"
          << "vision:\n  path: " << dir.str("models/tiny-clip") << "\n  select_layer: -2\n  select_feature: patch\n"
          << "projector:\n  type: mlp2x_gelu\n"
          << "data:\n  train:\n    - json: " << (json.empty() ? dir.str("data/captions.json") : json)
          << "\n      image_root: " << dir.str("data/images") << "\n" << curriculum
          << "  template: plain\n  batch_size: " << batch << "\n  grad_accum: 1\n  max_length: 128\n"
          << "  num_workers: 1\n  prefetch: 4\n"
          << "train:\n  stage: 1\n  max_steps: " << steps << "\n  lr: 1.0e-3\n  warmup_ratio: 0.1\n"
          << "  grad_clip: 1.0\n  seed: 7\n  log_every: 1\n  save_every: " << save_every
          << "\n  output_dir: " << out << "\n"
          << "checkpoint:\n  keep_last: 100\n  save_optimizer: true\n"
          << "logging:\n  level: info\n  jsonl: metrics.jsonl\n  progress_bar: false\n";
        const std::string path = dir.str(name);
        test::write_text(path, y.str());
        return path;
    }
};

// step -> JSONL record (the last one written for that step: a resumed run rewrites the steps after its checkpoint).
std::map<int64_t, nlohmann::json> records(const std::string & jsonl) {
    std::map<int64_t, nlohmann::json> out;
    std::ifstream in(jsonl);
    for (std::string line; std::getline(in, line);) {
        if (line.empty()) continue;
        auto j = nlohmann::json::parse(line);
        if (j.contains("step") && !j.contains("event")) out[j["step"].get<int64_t>()] = j;
    }
    return out;
}

std::string ckpt(const std::string & out, int64_t step) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "checkpoint-%08lld", static_cast<long long>(step));
    return (fs::path(out) / buf).string();
}

std::string latest_name(const std::string & out) {
    std::ifstream in(out + "/latest");
    std::string name;
    in >> name;
    return name;
}

}  // namespace

TEST_CASE("faults: kill -9 between checkpoints, --resume auto equals an uninterrupted run bit for bit", "[train][integration][faults]") {
    TinyWorld w(48);
    const int64_t N = 12;  // one epoch of 48 samples at batch 4
    const std::string a = w.dir.str("a"), b = w.dir.str("b");
    const std::string cfg_a = w.config("a.yaml", a, N, 2, 4), cfg_b = w.config("b.yaml", b, N, 2, 4);
    REQUIRE(run_train({"--config", cfg_a}, w.dir.str("a.log")) == 0);

    const pid_t pid = spawn_train({"--config", cfg_b}, w.dir.str("b.log"));
    // Kill while the run is computing, between saves: once step 3 is logged, checkpoint-2 is complete and
    // the process is inside step 4's forward/backward (the next save comes after step 4's record).
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
    bool ready = false;
    while (!ready && std::chrono::steady_clock::now() < deadline) {
        const auto recs = records(b + "/metrics.jsonl");
        ready = !recs.empty() && recs.rbegin()->first >= 3 && !latest_name(b).empty();
        if (!ready) std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
    ::kill(pid, SIGKILL);
    const int killed = wait_child(pid);
    INFO(read_file(w.dir.str("b.log")));
    REQUIRE(ready);
    REQUIRE(killed == 128 + SIGKILL);  // it did not finish on its own
    const auto before = records(b + "/metrics.jsonl");
    REQUIRE(before.rbegin()->first < N);
    const std::string resumed_from = io::resolve_resume(b, "auto");
    REQUIRE(!resumed_from.empty());
    CHECK(io::verify_checkpoint(resumed_from).empty());

    REQUIRE(run_train({"--config", cfg_b, "--resume", "auto"}, w.dir.str("b2.log")) == 0);
    const std::string log2 = read_file(w.dir.str("b2.log"));
    INFO(log2);
    CHECK_THAT(log2, Catch::Contains("resumed from " + resumed_from));

    // Every step's record of the interrupted + resumed run equals the straight run's, exactly.
    const auto ra = records(a + "/metrics.jsonl"), rb = records(b + "/metrics.jsonl");
    REQUIRE(ra.size() == static_cast<size_t>(N));
    REQUIRE(rb.size() == static_cast<size_t>(N));
    for (const auto & [step, ja] : ra) {
        INFO("step " << step);
        const auto & jb = rb.at(step);
        CHECK(jb["loss"].get<double>() == ja["loss"].get<double>());
        CHECK(jb["loss_ce"].get<double>() == ja["loss_ce"].get<double>());
        CHECK(jb["grad_norm"].get<double>() == ja["grad_norm"].get<double>());
        CHECK(jb["lr"].get<double>() == ja["lr"].get<double>());
    }
    CHECK(same_bytes(ckpt(a, N) + "/model.safetensors", ckpt(b, N) + "/model.safetensors"));
    CHECK(same_bytes(ckpt(a, N) + "/optimizer.safetensors", ckpt(b, N) + "/optimizer.safetensors"));
    CHECK(same_bytes(a + "/hf/model.safetensors", b + "/hf/model.safetensors"));
}

TEST_CASE("faults: 5% corrupt or missing images are skipped, counted and reported, the run completes", "[train][integration][faults]") {
    TinyWorld w(80);
    const std::string images = w.dir.str("data/images");
    auto data = nlohmann::json::parse(read_file(w.dir.str("data/captions.json")));
    REQUIRE(data.size() == 80);
    // One of each kind of damage, 4 of 80 samples = 5% (data.max_bad_fraction's default).
    const std::string png = read_file(images + "/" + data[0]["image"].get<std::string>());
    test::write_text(images + "/bad_truncated.png", png.substr(0, png.size() / 2));
    test::write_text(images + "/bad_truncated.jpg", read_file(test::fixture_path("images/truncated.jpg")));
    std::string garbage(3000, '\0');
    for (size_t i = 0; i < garbage.size(); ++i) garbage[i] = static_cast<char>((i * 2654435761u) >> 13);
    test::write_text(images + "/bad_garbage.png", garbage);
    const std::vector<std::pair<size_t, std::string>> injected = {
        {5, "bad_truncated.png"}, {23, "bad_truncated.jpg"}, {41, "bad_garbage.png"}, {66, "does_not_exist.png"}};
    for (const auto & [i, f] : injected) data[i]["image"] = f;
    test::write_text(w.dir.str("data/captions_damaged.json"), data.dump(1));

    const std::string out = w.dir.str("out");
    const int64_t N = 10;  // exactly one epoch at batch 8: every sample, bad ones included, is used once
    const std::string cfg = w.config("c.yaml", out, N, 0, 8, w.dir.str("data/captions_damaged.json"));
    const int rc = run_train({"--config", cfg}, w.dir.str("c.log"));
    const std::string log = read_file(w.dir.str("c.log"));
    INFO(log);
    REQUIRE(rc == 0);
    CHECK(fs::exists(out + "/hf/model.safetensors"));
    const auto recs = records(out + "/metrics.jsonl");
    REQUIRE(recs.size() == static_cast<size_t>(N));
    CHECK(recs.at(N)["skipped_samples"] == injected.size());
    CHECK(recs.at(1)["skipped_samples"].get<int64_t>() <= recs.at(N)["skipped_samples"].get<int64_t>());
    for (const auto & [step, j] : recs) CHECK(std::isfinite(j["loss"].get<double>()));
    CHECK_THAT(log, Catch::Contains("4 bad samples were skipped") && Catch::Contains("bad_image="));
    for (const auto & [i, f] : injected) {
        INFO(f);
        CHECK_THAT(log, Catch::Contains("bad sample " + data[i]["id"].get<std::string>()));
    }
}

TEST_CASE("faults: a full disk while saving keeps the previous checkpoint, --resume auto then finishes", "[train][integration][faults]") {
    TinyWorld w(32);
    const int64_t N = 8;
    const std::string a = w.dir.str("a"), b = w.dir.str("b");
    REQUIRE(run_train({"--config", w.config("a.yaml", a, N, 2, 4)}, w.dir.str("a.log")) == 0);
    const std::string cfg = w.config("b.yaml", b, N, 2, 4);
    REQUIRE(run_train({"--config", cfg, "--set", "train.stop_after=2"}, w.dir.str("b1.log")) == 0);
    REQUIRE(io::verify_checkpoint(ckpt(b, 2)).empty());
    const auto ckpt_bytes = read_file(ckpt(b, 2) + "/model.safetensors");

    // Every file may grow to 24 KiB: the metrics JSONL and the log fit, model.safetensors (the
    // projector, ~100 KiB) does not. The binary ignores SIGXFSZ, so write() fails with EFBIG as on a full disk.
    const rlim_t limit = 24 * 1024;
    REQUIRE(fs::file_size(ckpt(b, 2) + "/model.safetensors") > limit);
    const int rc = run_train({"--config", cfg, "--resume", "auto"}, w.dir.str("b2.log"), limit);
    const std::string log = read_file(w.dir.str("b2.log"));
    INFO(log);
    CHECK(rc == 1);  // an I/O failure of this run, not a config error
    // The mid-run saves (steps 4, 6) fail and training goes on; the final one fails the run. Each says
    // which checkpoint is still good.
    CHECK_THAT(log, Catch::Contains("saving checkpoint for step 4 failed") && Catch::Contains("model.safetensors") &&
                        Catch::Contains("Training continues"));
    CHECK_THAT(log, Catch::Contains("saving checkpoint for step 8 failed") &&
                        Catch::Contains("The previous checkpoint " + ckpt(b, 2) + " is still valid"));
    CHECK(io::list_checkpoints(b) == std::vector<std::string>{ckpt(b, 2)});
    for (int64_t s : {4, 6, 8}) CHECK(!fs::exists(ckpt(b, s) + ".tmp"));
    CHECK(latest_name(b) == "checkpoint-00000002");
    CHECK(io::verify_checkpoint(ckpt(b, 2)).empty());
    CHECK((read_file(ckpt(b, 2) + "/model.safetensors") == ckpt_bytes));

    // Space again: the resume continues from step 2 and ends where the uninterrupted run did.
    REQUIRE(run_train({"--config", cfg, "--resume", "auto"}, w.dir.str("b3.log")) == 0);
    CHECK_THAT(read_file(w.dir.str("b3.log")), Catch::Contains("resumed from " + ckpt(b, 2)));
    CHECK(same_bytes(ckpt(a, N) + "/model.safetensors", ckpt(b, N) + "/model.safetensors"));
    CHECK(same_bytes(a + "/hf/model.safetensors", b + "/hf/model.safetensors"));
}

TEST_CASE("data.curriculum: the phase's files first, then data.train, and resumes inside and after the phase equal a straight run",
          "[train][integration][faults]") {
    TinyWorld w(48);
    // The phase: the first 8 caption records (2 micro-batches an epoch at batch 4), for 3 steps; then all 48 (12 an epoch).
    const auto all = nlohmann::json::parse(read_file(w.dir.str("data/captions.json")));
    test::write_text(w.dir.str("head.json"), nlohmann::json(std::vector<nlohmann::json>(all.begin(), all.begin() + 8)).dump());
    const std::string phase = "  curriculum:\n    - steps: 3\n      train:\n        - json: " + w.dir.str("head.json") +
                              "\n          image_root: " + w.dir.str("data/images") + "\n";
    const int64_t N = 8;
    const std::string a = w.dir.str("a"), b = w.dir.str("b");
    // Runs `curriculum` (save_every 2) and the same config on the phase's files alone at the phase's micro-batch:
    // the same batches, weights and learning rates for 3 steps; step 4 is data.train's first batch at batch 4,
    // epoch 1/12 of the 48 records. Returns both runs' records.
    auto phase_then_main = [&](const std::string & out, const std::string & curriculum, int64_t phase_batch) {
        const std::string ref = out + "_ref";
        REQUIRE(run_train({"--config", w.config(out + ".yaml", out, N, 2, 4, "", curriculum)}, out + ".log") == 0);
        const std::string log = read_file(out + ".log");
        INFO(log);
        CHECK_THAT(log, Catch::Contains("curriculum phase 0: 3 steps, batch " + std::to_string(phase_batch) + " per rank"));
        CHECK_THAT(log, Catch::Contains("curriculum phase 0 done (3 steps, batch " + std::to_string(phase_batch) +
                                        "); next: data.train"));
        REQUIRE(run_train({"--config", w.config(out + "_ref.yaml", ref, N, 0, phase_batch, w.dir.str("head.json"))}, ref + ".log") == 0);
        auto got = records(out + "/metrics.jsonl"), want = records(ref + "/metrics.jsonl");
        REQUIRE(got.size() == static_cast<size_t>(N));
        for (int64_t step = 1; step <= 3; ++step) {
            INFO("step " << step);
            CHECK(got.at(step)["loss"].get<double>() == want.at(step)["loss"].get<double>());
            CHECK(got.at(step)["epoch"].get<double>() == Approx(static_cast<double>(step * phase_batch) / 8.0));
        }
        CHECK(got.at(4)["epoch"].get<double>() == Approx(1.0 / 12.0));
        return std::make_pair(got, want);
    };
    const auto [ra, rr] = phase_then_main(a, phase, 4);
    // and another loss than the phase's files give at step 4
    CHECK(rr.at(4)["epoch"].get<double>() == Approx(2.0));
    CHECK(ra.at(4)["loss"].get<double>() != rr.at(4)["loss"].get<double>());

    // Stopped after step 2 (inside the phase), then after step 5 (after it), each time resumed.
    const std::string cfg_b = w.config("b.yaml", b, N, 2, 4, "", phase);
    REQUIRE(run_train({"--config", cfg_b, "--set", "train.stop_after=2"}, w.dir.str("b.log")) == 0);
    REQUIRE(run_train({"--config", cfg_b, "--resume", "auto", "--set", "train.stop_after=3"}, w.dir.str("b.log")) == 0);
    REQUIRE(run_train({"--config", cfg_b, "--resume", "auto"}, w.dir.str("b.log")) == 0);
    const std::string log_b = read_file(w.dir.str("b.log"));
    INFO(log_b);
    CHECK_THAT(log_b, Catch::Contains("resumed from " + ckpt(b, 2)));
    CHECK_THAT(log_b, Catch::Contains("resumed from " + ckpt(b, 5)));
    const auto rb = records(b + "/metrics.jsonl");
    REQUIRE(rb.size() == static_cast<size_t>(N));
    for (const auto & [step, ja] : ra) {
        INFO("step " << step);
        CHECK(rb.at(step)["loss"].get<double>() == ja["loss"].get<double>());
        CHECK(rb.at(step)["epoch"].get<double>() == ja["epoch"].get<double>());
    }
    CHECK(same_bytes(a + "/hf/model.safetensors", b + "/hf/model.safetensors"));

    // The phase with its own peak: its 3 steps warm up and decay on their own, then data.train's schedule
    // runs over the other 5 steps (train/schedule.h), as the JSONL's learning rates show.
    const std::string c = w.dir.str("c");
    const std::string own = "  curriculum:\n    - steps: 3\n      lr: 5.0e-4\n      train:\n        - json: " + w.dir.str("head.json") +
                            "\n          image_root: " + w.dir.str("data/images") + "\n";
    REQUIRE(run_train({"--config", w.config("c.yaml", c, N, 0, 4, "", own)}, w.dir.str("c.log")) == 0);
    const auto rc = records(c + "/metrics.jsonl");
    REQUIRE(rc.size() == static_cast<size_t>(N));
    const auto phase_lr = idamoe::train::LrSchedule::cosine(5e-4, 3, 0.1, 0.0), main_lr = idamoe::train::LrSchedule::cosine(1e-3, 5, 0.1, 0.0);
    for (const auto & [step, j] : rc) {
        INFO("step " << step);
        CHECK(j["lr"].get<double>() == Approx(step <= 3 ? phase_lr.at(step - 1) : main_lr.at(step - 4)).margin(1e-12));
    }

    // The phase with its own micro-batch (2 instead of data.batch_size 4): its 3 steps equal a run on the
    // phase's files at batch 2 (4 micro-batches an epoch), then data.train continues at batch 4.
    const std::string small = "  curriculum:\n    - steps: 3\n      batch_size: 2\n      train:\n        - json: " + w.dir.str("head.json") +
                              "\n          image_root: " + w.dir.str("data/images") + "\n";
    phase_then_main(w.dir.str("e"), small, 2);
}
