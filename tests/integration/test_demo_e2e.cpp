// The README's demo, shortened to seconds: the same binaries and the same configs/demo/*.yaml as
// scripts/demo.sh, on a tiny generated world, through stage 1 -> 2 -> 3 (IDA-MoE and linear_aux) and eval.
// What it proves is the plumbing, not accuracy: every stage consumes the previous stage's output,
// the stage-3 exports hold experts and routers under HF names, and eval writes LLaVA's answers format.
#include "test_utils.h"

#include "io/safetensors.h"

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

namespace fs = std::filesystem;
using idamoe::test::binary_path;
using idamoe::test::fixture_path;
using idamoe::test::TempDir;
using json = nlohmann::json;

namespace {

int sh(const std::string & cmd, const std::string & log) {
    INFO("command: " << cmd << "\n(log: " << log << ")");
    return std::system((cmd + " > " + log + " 2>&1").c_str());
}

int64_t count_lines(const fs::path & p) {
    std::ifstream in(p);
    std::string line;
    int64_t n = 0;
    while (std::getline(in, line))
        if (!line.empty()) ++n;
    return n;
}

}  // namespace

TEST_CASE("demo: shortened end to end, stage 1 -> 2 -> 3 (ida and linear_aux) -> eval", "[demo][integration]") {
    TempDir t;
    const fs::path demo = t.path;
    const std::string configs = (fs::path(fixture_path("")) / ".." / ".." / "configs" / "demo").lexically_normal().string();
    REQUIRE(fs::exists(configs + "/stage3_linear_aux.yaml"));
    // configs/demo/base.yaml locates everything under ${IDAMOE_DEMO_DIR}, as scripts/demo.sh sets it
    REQUIRE(setenv("IDAMOE_DEMO_DIR", demo.c_str(), 1) == 0);
    const std::string log = t.str("log.txt");

    REQUIRE(sh(binary_path("gen-shapes-dataset") + " --out " + t.str("data") +
                   " --seed 3 --n-caption 16 --n-instruct 24 --n-text 8 --n-eval 12 --image-size 56 --grid 4", log) == 0);
    REQUIRE(sh(binary_path("train-bpe-tokenizer") + " --corpus " + t.str("data/corpus.txt") +
                   " --vocab-size 512 --out " + t.str("tokenizer.json"), log) == 0);
    REQUIRE(sh(binary_path("make-tiny-models") + " --tokenizer " + t.str("tokenizer.json") + " --out " +
                   t.str("models") + " --seed 0", log) == 0);

    const std::string quick = " --set train.max_steps=3 --set data.batch_size=4 --set train.log_every=1";
    // stage 2's presence phase shortened to 1 step of 2 (its own lr and file as configured)
    const std::string phase = " --set 'data.curriculum=[{steps: 1, lr: 3.0e-4, batch_size: 2, train: [{json: " + t.str("data/presence_first.json") +
                              ", image_root: " + t.str("data/images") + "}]}]'";
    for (const char * stage : {"stage1", "stage2", "stage3", "stage3_linear_aux"}) {
        INFO("stage " << stage);
        REQUIRE(sh(binary_path("idamoe-train") + " --config " + configs + "/" + stage + ".yaml" + quick +
                       (std::string(stage) == "stage2" ? phase : ""), log) == 0);
        if (std::string(stage) == "stage2")
            CHECK_THAT(idamoe::test::read_file(log), Catch::Contains("curriculum phase 0 done (1 steps, batch 2); next: data.train"));
    }
    for (const char * out : {"stage1", "stage2", "stage3_ida", "stage3_linear_aux"}) {
        INFO("output " << out);
        CHECK(fs::exists(demo / out / "latest"));
        CHECK(count_lines(demo / out / "metrics.jsonl") >= 3);
    }

    // stage 3 exports: upcycled experts + the warmed-up IDA router, or the linear gate, under HF names
    {
        idamoe::io::SafetensorsFile ida((demo / "stage3_ida/hf/model.safetensors").string());
        CHECK(ida.contains("model.layers.0.mlp.experts.3.down_proj.weight"));
        CHECK(ida.contains("model.layers.2.mlp.router.gmm.1.means"));
        CHECK_FALSE(ida.contains("model.layers.1.mlp.experts.0.down_proj.weight"));  // every other layer
        idamoe::io::SafetensorsFile lin((demo / "stage3_linear_aux/hf/model.safetensors").string());
        CHECK(lin.contains("model.layers.0.mlp.experts.0.up_proj.weight"));
        CHECK_FALSE(lin.contains("model.layers.0.mlp.router.gmm.0.means"));
        const json cfg = json::parse(std::ifstream(demo / "stage3_ida/hf/config.json"));
        CHECK(cfg.dump().find("\"ida\"") != std::string::npos);
    }

    // eval of the IDA-MoE export on the held-out questions, in LLaVA's answers format
    REQUIRE(sh(binary_path("idamoe-train") + " eval --config " + configs + "/stage3.yaml --questions " +
                   t.str("data/eval_questions.jsonl") + " --image-root " + t.str("data/images") +
                   " --checkpoint " + t.str("stage3_ida") + " --out " + t.str("eval_ida") +
                   " --limit 6 --model-id ida", log) == 0);
    REQUIRE(count_lines(demo / "eval_ida/answers.jsonl") == 6);
    std::ifstream answers(demo / "eval_ida/answers.jsonl");
    std::string first;
    std::getline(answers, first);
    const json a = json::parse(first);
    for (const char * k : {"question_id", "prompt", "text", "answer_id", "model_id"}) CHECK(a.contains(k));
    CHECK(a.at("model_id") == "ida");
    // routing records carry the router's full distribution over the 4 experts (Fig. 3 / Fig. 6 inputs)
    std::ifstream routing(demo / "eval_ida/routing.jsonl");
    std::string rline;
    REQUIRE(std::getline(routing, rline));
    const json rec = json::parse(rline);
    REQUIRE(rec.at("probs").size() > 0);
    int64_t rows_beyond_topk = 0;
    for (const auto & row : rec.at("probs")) {
        REQUIRE(row.size() == 4);
        double sum = 0;
        int64_t nonzero = 0;
        for (const auto & p : row) sum += p.get<double>(), nonzero += p.get<double>() > 0;
        CHECK(sum == Approx(1.0).epsilon(1e-4));
        rows_beyond_topk += nonzero > 2;
    }
    CHECK(rows_beyond_topk > 0);  // posteriors over all experts, not just the two top-k gates
    const json scores = json::parse(std::ifstream(demo / "eval_ida/scores.json"));
    CHECK(scores.dump().find("\"all\"") != std::string::npos);
    unsetenv("IDAMOE_DEMO_DIR");
}
