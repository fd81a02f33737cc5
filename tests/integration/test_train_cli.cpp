// CLI tests of idamoe-train: the bench subcommand prints one JSON line; a stage-3 run pointed at a
// non-idamoe folder exits 2 and says which stage output it needs.
#include "test_utils.h"

#include <catch2/catch.hpp>

#include <nlohmann/json.hpp>

#include <cstdio>
#include <string>
#include <sys/wait.h>

using namespace idamoe;

namespace {
std::pair<int, std::string> run(const std::string & cmd) {
    std::string out;
    FILE * p = popen((cmd + " 2>&1").c_str(), "r");
    char buf[4096];
    while (p && std::fgets(buf, sizeof buf, p)) out += buf;
    const int status = p ? pclose(p) : -1;
    return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, out};
}
}  // namespace

TEST_CASE("cli: bench prints one JSON line with the throughput numbers", "[train][integration]") {
    auto [rc, out] = run("OMP_NUM_THREADS=1 " + test::binary_path("idamoe-train") + " bench --model " +
                         test::fixture_path("hf/qwen2") + " --batch 1 --seq 8 --steps 2 --warmup 1 --device cpu --moe linear_aux");
    INFO(out);
    REQUIRE(rc == 0);
    const auto last = out.substr(out.find_last_of('{') == std::string::npos ? 0 : out.rfind("\n{") + 1);
    auto j = nlohmann::json::parse(last);
    CHECK(j["tokens_per_s"].get<double>() > 0);
    CHECK(j.contains("step_breakdown_ms"));
    CHECK(j["moe"] == "linear_aux");
}

TEST_CASE("cli: stage 3 from a folder that is not a stage-2 output exits 2 with the reason", "[train][integration]") {
    test::TempDir dir;
    test::write_text(dir.str("not_stage2/config.json"), "{}");
    test::write_text(dir.str("c.yaml"), "model:\n  llm_path: " + test::fixture_path("hf/qwen2") +
                                            "\ntrain:\n  stage: 3\n  init_from: " + dir.str("not_stage2") +
                                            "\n  output_dir: " + dir.str("out") + "\ndata:\n  train:\n    - json: " +
                                            test::fixture_path("llava/tiny.json") + "\n      image_root: " + dir.str() + "\n");
    auto [rc, out] = run(test::binary_path("idamoe-train") + " --config " + dir.str("c.yaml"));
    INFO(out);
    CHECK(rc == 2);
    CHECK_THAT(out, Catch::Contains("stage 3 starts from a stage-2 output") && Catch::Contains("not an idamoe stage output"));
}
