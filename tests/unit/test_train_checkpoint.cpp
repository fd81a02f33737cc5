// Tests: checkpoint atomic save / verify / load, corruption and truncation detection with fallback,
// retention, full-disk behaviour, RNG capture/restore, CRC-32.
#include "io/checkpoint.h"

#include "test_utils.h"

#include <catch2/catch.hpp>

#include <csignal>
#include <filesystem>
#include <fstream>
#include <sys/resource.h>

using namespace idamoe;
namespace fs = std::filesystem;

namespace {
io::CheckpointData sample(int64_t step, int64_t n = 64) {
    io::CheckpointData d;
    d.step = step;
    torch::manual_seed(step);
    d.model["model.mm_projector.0.weight"] = torch::randn({n, 16});
    d.model["model.mm_projector.0.bias"] = torch::randn({16}).to(torch::kBFloat16);
    d.optimizer["exp_avg/model.mm_projector.0.weight"] = torch::randn({n, 16});
    d.optimizer["step/model.mm_projector.0.weight"] = torch::tensor(step, torch::kInt64);
    d.rng = io::capture_rng_state();
    d.trainer_state = {{"sampler", {{"epoch", 0}, {"position", step * 4}}}, {"stage", 1}};
    d.config_yaml = "train:\n  stage: 1\n";
    return d;
}
void flip_byte(const std::string & file, std::streamoff at) {
    std::fstream f(file, std::ios::in | std::ios::out | std::ios::binary);
    f.seekg(at);
    char c;
    f.read(&c, 1);
    c = static_cast<char>(c ^ 0x5A);
    f.seekp(at);
    f.write(&c, 1);
}
}  // namespace

TEST_CASE("checkpoint: crc32 matches the IEEE check value", "[train]") {
    const std::string s = "123456789";
    CHECK(io::crc32(s.data(), s.size()) == 0xCBF43926u);
    CHECK(io::crc32(s.data() + 4, 5, io::crc32(s.data(), 4)) == 0xCBF43926u);  // streaming
}

TEST_CASE("checkpoint: save then load round-trips every part bit-exactly", "[train]") {
    test::TempDir dir;
    auto d = sample(7);
    const std::string path = io::save_checkpoint(dir.str(), d, 3);
    CHECK(fs::path(path).filename() == "checkpoint-00000007");
    CHECK(!fs::exists(path + ".tmp"));
    std::ifstream latest(dir.str("latest"));
    std::string name;
    latest >> name;
    CHECK(name == "checkpoint-00000007");
    CHECK(io::verify_checkpoint(path).empty());
    auto back = io::load_checkpoint(path);
    CHECK(back.step == 7);
    for (auto & [k, v] : d.model) {
        INFO(k);
        REQUIRE(back.model.count(k));
        CHECK(back.model.at(k).scalar_type() == v.scalar_type());
        CHECK(torch::equal(back.model.at(k), v));
    }
    CHECK(torch::equal(back.optimizer.at("exp_avg/model.mm_projector.0.weight"), d.optimizer.at("exp_avg/model.mm_projector.0.weight")));
    CHECK(back.trainer_state["sampler"]["position"] == 28);
    CHECK(back.trainer_state["format_version"] == io::kCheckpointFormatVersion);
    CHECK(back.config_yaml == d.config_yaml);
}

TEST_CASE("checkpoint: RNG state restores the exact random stream", "[train]") {
    torch::manual_seed(123);
    torch::rand({3});
    auto state = io::capture_rng_state();
    auto a = torch::rand({5});
    torch::rand({11});
    io::restore_rng_state(state);
    auto b = torch::rand({5});
    CHECK(torch::equal(a, b));
}

TEST_CASE("checkpoint: corrupt and truncated checkpoints are detected, auto falls back", "[train]") {
    test::TempDir dir;
    const auto c1 = io::save_checkpoint(dir.str(), sample(1), 0);
    const auto c2 = io::save_checkpoint(dir.str(), sample(2), 0);
    const auto c3 = io::save_checkpoint(dir.str(), sample(3), 0);
    CHECK(io::resolve_resume(dir.str(), "auto") == c3);

    fs::resize_file(c3 + "/model.safetensors", fs::file_size(c3 + "/model.safetensors") - 10);
    CHECK_THAT(io::verify_checkpoint(c3), Catch::Contains("model.safetensors") && Catch::Contains("truncated"));
    flip_byte(c2 + "/optimizer.safetensors", 200);
    CHECK_THAT(io::verify_checkpoint(c2), Catch::Contains("optimizer.safetensors") && Catch::Contains("CRC"));
    CHECK(io::resolve_resume(dir.str(), "auto") == c1);
    CHECK_THROWS_WITH(io::load_checkpoint(c3), Catch::Contains("truncated"));
    CHECK_THROWS_WITH(io::resolve_resume(dir.str(), c2), Catch::Contains("CRC"));

    fs::remove(c1 + "/manifest.json");
    CHECK_THAT(io::verify_checkpoint(c1), Catch::Contains("manifest.json is missing"));
    CHECK(io::resolve_resume(dir.str(), "auto").empty());
    test::TempDir empty;
    CHECK(io::resolve_resume(empty.str(), "auto").empty());
}

TEST_CASE("checkpoint: keep_last retention and leftover temp folders", "[train]") {
    test::TempDir dir;
    fs::create_directories(dir.str("checkpoint-00000009.tmp"));  // a crash left this behind
    for (int64_t s = 1; s <= 5; ++s) io::save_checkpoint(dir.str(), sample(s), 2);
    auto all = io::list_checkpoints(dir.str());
    REQUIRE(all.size() == 2);
    CHECK(fs::path(all[0]).filename() == "checkpoint-00000004");
    CHECK(fs::path(all[1]).filename() == "checkpoint-00000005");
}

TEST_CASE("checkpoint: a full disk leaves the previous checkpoint valid and says so", "[train]") {
    test::TempDir dir;
    const auto good = io::save_checkpoint(dir.str(), sample(1), 3);
    // RLIMIT_FSIZE makes write() fail with EFBIG past the limit, like a full disk (SIGXFSZ ignored).
    auto old_handler = std::signal(SIGXFSZ, SIG_IGN);
    rlimit old{};
    getrlimit(RLIMIT_FSIZE, &old);
    rlimit tiny = old;
    tiny.rlim_cur = 16 * 1024;
    setrlimit(RLIMIT_FSIZE, &tiny);
    std::string error;
    try {
        io::save_checkpoint(dir.str(), sample(2, 4096), 3);  // model.safetensors ~256 KiB
    } catch (const io::CheckpointError & e) {
        error = e.what();
    }
    setrlimit(RLIMIT_FSIZE, &old);
    std::signal(SIGXFSZ, old_handler);
    INFO(error);
    CHECK_THAT(error, Catch::Contains("step 2 failed") && Catch::Contains("model.safetensors") &&
                          Catch::Contains(good + " is still valid"));
    CHECK(!fs::exists(dir.str("checkpoint-00000002.tmp")));
    CHECK(!fs::exists(dir.str("checkpoint-00000002")));
    CHECK(io::resolve_resume(dir.str(), "auto") == good);
    std::ifstream latest(dir.str("latest"));
    std::string name;
    latest >> name;
    CHECK(name == "checkpoint-00000001");
}
