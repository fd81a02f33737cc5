#include "core/config.h"
#include "test_utils.h"

#include <catch2/catch.hpp>

#include <cstdlib>

using idamoe::core::Config;
using idamoe::core::ConfigError;
using idamoe::core::load_config;
using idamoe::test::TempDir;
using idamoe::test::write_text;

namespace {

const char * kMinimal = R"(model:
  llm_path: models/llm
data:
  train:
    - json: data/train.json
      image_root: data/images
train:
  stage: 1
)";

std::string error_of(const std::function<void()> & f) {
    try {
        f();
    } catch (const ConfigError & e) {
        return e.what();
    }
    return "<no error>";
}

}  // namespace

TEST_CASE("config: minimal file parses with defaults and resolves relative paths", "[config]") {
    TempDir d;
    write_text(d.str("run/a.yaml"), kMinimal);
    Config c = load_config(d.str("run/a.yaml"));
    CHECK(c.model.llm_path == d.str("run/models/llm"));
    REQUIRE(c.data.train.size() == 1);
    CHECK(c.data.train[0].json == d.str("run/data/train.json"));
    CHECK(c.data.train[0].image_root == d.str("run/data/images"));
    CHECK(c.train.stage == 1);
    CHECK(c.moe.top_k == 2);
    CHECK(c.moe.latent_dim == 32);
    CHECK(c.moe.router == "ida");
}

TEST_CASE("config: base inheritance is recursive and the child overrides", "[config]") {
    TempDir d;
    write_text(d.str("base/root.yaml"), std::string(kMinimal) + "moe:\n  num_experts: 8\n  top_k: 2\n");
    write_text(d.str("base/mid.yaml"), "base: root.yaml\nmoe:\n  latent_dim: 16\ntrain:\n  lr: 0.001\n");
    write_text(d.str("leaf.yaml"), "base: base/mid.yaml\ntrain:\n  lr: 0.0002\n  stage: 1\n");
    Config c = load_config(d.str("leaf.yaml"));
    CHECK(c.moe.num_experts == 8);      // from root
    CHECK(c.moe.latent_dim == 16);      // from mid
    CHECK(c.train.lr == Approx(2e-4));  // leaf wins
    // paths set in root.yaml resolve against root.yaml's folder
    CHECK(c.model.llm_path == d.str("base/models/llm"));
}

TEST_CASE("config: --set overrides apply last and are typed", "[config]") {
    TempDir d;
    write_text(d.str("a.yaml"), kMinimal);
    Config c = load_config(d.str("a.yaml"), {"train.lr=1e-4", "moe.top_k=1", "moe.reactivation=false",
                                             "moe.layers=[1,3]", "train.output_dir=/abs/out"});
    CHECK(c.train.lr == Approx(1e-4));
    CHECK(c.moe.top_k == 1);
    CHECK_FALSE(c.moe.reactivation);
    CHECK(c.moe.layers == "1,3");
    CHECK(c.train.output_dir == "/abs/out");
    CHECK_THAT(error_of([&] { load_config(d.str("a.yaml"), {"moe.top_k=two"}); }),
               Catch::Contains("--set moe.top_k=two") && Catch::Contains("moe.top_k: expected an integer, got 'two'"));
    CHECK_THAT(error_of([&] { load_config(d.str("a.yaml"), {"noequals"}); }), Catch::Contains("expected key.path=value"));
}

TEST_CASE("config: environment variables with defaults", "[config]") {
    TempDir d;
    ::setenv("IDAMOE_TEST_ROOT", "/data/root", 1);
    ::unsetenv("IDAMOE_TEST_UNSET");
    write_text(d.str("a.yaml"), std::string(kMinimal) +
                                    "vision:\n  path: ${IDAMOE_TEST_ROOT}/clip\n"
                                    "logging:\n  jsonl: ${IDAMOE_TEST_UNSET:-m.jsonl}\n");
    Config c = load_config(d.str("a.yaml"));
    CHECK(c.vision.path == "/data/root/clip");
    CHECK(c.logging.jsonl == "m.jsonl");
    write_text(d.str("b.yaml"), std::string(kMinimal) + "vision:\n  path: ${IDAMOE_TEST_UNSET}/clip\n");
    CHECK_THAT(error_of([&] { load_config(d.str("b.yaml")); }),
               Catch::Contains("b.yaml:") && Catch::Contains("vision.path") &&
                   Catch::Contains("environment variable IDAMOE_TEST_UNSET is not set"));
}

TEST_CASE("config: every error names the file, line and dotted key", "[config]") {
    TempDir d;
    auto err = [&](const std::string & extra) {
        write_text(d.str("e.yaml"), std::string(kMinimal) + extra);
        return error_of([&] { load_config(d.str("e.yaml")); });
    };
    SECTION("unknown key suggests the closest valid one") {
        std::string e = err("moe:\n  num_expert: 4\n");
        CHECK_THAT(e, Catch::Contains("e.yaml:10") && Catch::Contains("moe.num_expert: unknown key") &&
                          Catch::Contains("did you mean 'moe.num_experts'"));
        CHECK_THAT(err("trian:\n  lr: 1\n"), Catch::Contains("trian: unknown key (did you mean 'train'?)"));
    }
    SECTION("wrong type") {
        CHECK_THAT(err("moe:\n  alpha: lots\n"), Catch::Contains("e.yaml:10: moe.alpha: expected a number, got 'lots'"));
        CHECK_THAT(err("moe:\n  reactivation: maybe\n"), Catch::Contains("moe.reactivation: expected true or false"));
        CHECK_THAT(err("moe:\n  num_experts: [1, 2]\n"), Catch::Contains("moe.num_experts: expected an integer, got a list"));
    }
    SECTION("out of range") {
        CHECK_THAT(err("moe:\n  num_experts: 4\n  top_k: 5\n"),
                   Catch::Contains("e.yaml:11: moe.top_k: top_k (5) must be <= moe.num_experts (4)"));
        CHECK_THAT(err("moe:\n  latent_dim: 0\n"), Catch::Contains("moe.latent_dim: must be >= 1"));
        CHECK_THAT(err("moe:\n  alpha: -0.1\n"), Catch::Contains("moe.alpha: must be >= 0"));
        CHECK_THAT(err("moe:\n  beta: -1\n"), Catch::Contains("moe.beta: must be >= 0"));
        CHECK_THAT(error_of([&] { load_config(d.str("e.yaml"), {"train.lr=0"}); }), Catch::Contains("train.lr: must be > 0"));
        CHECK_THAT(err("moe:\n  router: magic\n"), Catch::Contains("moe.router: expected one of {ida, linear_aux"));
        CHECK_THAT(err("moe:\n  layers: [0, x]\n"), Catch::Contains("moe.layers: expected non-negative layer indices"));
    }
    SECTION("missing required key") {
        write_text(d.str("m.yaml"), "train:\n  stage: 1\n");
        CHECK_THAT(error_of([&] { load_config(d.str("m.yaml")); }),
                   Catch::Contains("m.yaml: model.llm_path: missing required key"));
        write_text(d.str("s2.yaml"), std::string(kMinimal) + "  lr: 0.1\n");
        CHECK_THAT(error_of([&] { load_config(d.str("s2.yaml"), {"train.stage=2"}); }),
                   Catch::Contains("train.init_from: missing required key: stage 2"));
    }
    SECTION("base cycle and unreadable files") {
        write_text(d.str("c1.yaml"), "base: c2.yaml\n");
        write_text(d.str("c2.yaml"), "base: c1.yaml\n");
        CHECK_THAT(error_of([&] { load_config(d.str("c1.yaml")); }), Catch::Contains("base: cycle"));
        write_text(d.str("nb.yaml"), "base: nowhere.yaml\n");
        CHECK_THAT(error_of([&] { load_config(d.str("nb.yaml")); }),
                   Catch::Contains("nb.yaml:1: base: file") && Catch::Contains("nowhere.yaml does not exist"));
        CHECK_THAT(error_of([&] { load_config(d.str("absent.yaml")); }), Catch::Contains("absent.yaml: config file does not exist"));
        write_text(d.str("bad.yaml"), "model: [unclosed\n");
        CHECK_THAT(error_of([&] { load_config(d.str("bad.yaml")); }), Catch::Contains("bad.yaml:") && Catch::Contains("YAML syntax error"));
    }
}

TEST_CASE("config: print-config round-trips through the loader", "[config]") {
    TempDir d;
    write_text(d.str("a.yaml"), kMinimal);
    Config c = load_config(d.str("a.yaml"), {"moe.layers=[0,2]", "train.trainable=[mm_projector]"});
    std::string y = idamoe::core::config_to_yaml(c);
    write_text(d.str("printed.yaml"), y);
    Config c2 = load_config(d.str("printed.yaml"));
    CHECK(idamoe::core::config_to_yaml(c2) == y);
    CHECK(c2.moe.layers == "0,2");
    CHECK(c2.train.trainable == std::vector<std::string>{"mm_projector"});
}

TEST_CASE("config: data.curriculum phases parse, resolve their paths, print back, and name their errors", "[config]") {
    TempDir d;
    auto with = [&](const std::string & phases, const std::string & train = "") {
        write_text(d.str("run/c.yaml"), "model:\n  llm_path: m\ndata:\n  train:\n    - json: main.json\n  curriculum:\n" + phases +
                                            "train:\n  stage: 1\n" + train);
        return d.str("run/c.yaml");
    };
    const std::string two = "    - steps: 600\n      lr: 1.0e-3\n      batch_size: 16\n      train:\n        - json: first.json\n          image_root: img\n"
                            "    - steps: 50\n      train:\n        - json: second.json\n";
    Config c = load_config(with(two));
    REQUIRE(c.data.curriculum.size() == 2);
    CHECK(c.data.curriculum[0].steps == 600);
    CHECK(c.data.curriculum[0].lr == 1e-3);
    CHECK(c.data.curriculum[1].lr == 0.0);
    CHECK(c.data.curriculum[0].batch_size == 16);
    CHECK(c.data.curriculum[1].batch_size == 0);
    CHECK(c.data.curriculum[0].train.at(0).json == d.str("run/first.json"));
    CHECK(c.data.curriculum[0].train.at(0).image_root == d.str("run/img"));
    CHECK(c.data.curriculum[1].train.at(0).json == d.str("run/second.json"));
    const std::string y = idamoe::core::config_to_yaml(c);
    write_text(d.str("printed.yaml"), y);
    CHECK(idamoe::core::config_to_yaml(load_config(d.str("printed.yaml"))) == y);
    CHECK(idamoe::core::config_to_yaml(load_config(d.str("printed.yaml"))).find("curriculum") != std::string::npos);

    CHECK_THAT(error_of([&] { load_config(with("    - steps: 0\n      train:\n        - json: a.json\n")); }),
               Catch::Contains("c.yaml:6: data.curriculum[0].steps: expected a positive number of optimizer steps, got 0"));
    CHECK_THAT(error_of([&] { load_config(with("    - steps: 5\n      lr: -1\n      train:\n        - json: a.json\n")); }),
               Catch::Contains("data.curriculum[0].lr: expected a peak learning rate > 0, or 0 to follow train.lr's schedule"));
    CHECK_THAT(error_of([&] { load_config(with("    - steps: 5\n      batch_size: -2\n      train:\n        - json: a.json\n")); }),
               Catch::Contains("data.curriculum[0].batch_size: expected a micro-batch size > 0, or 0 for data.batch_size, got -2"));
    CHECK_THAT(error_of([&] { load_config(with("    - steps: 5\n")); }),
               Catch::Contains("data.curriculum[0].train: missing required key"));
    CHECK_THAT(error_of([&] { load_config(with("    - step: 5\n")); }),
               Catch::Contains("data.curriculum[0].step: unknown key (did you mean 'data.curriculum[0].steps'?)"));
    CHECK_THAT(error_of([&] { load_config(with("    - steps: 5\n      train:\n        - image_root: x\n")); }),
               Catch::Contains("data.curriculum[0].train[0].json: missing required key"));
    CHECK_THAT(error_of([&] { load_config(with("    - 600\n")); }),
               Catch::Contains("data.curriculum[0]: expected a mapping with steps: and train:, got '600'"));
    CHECK_THAT(error_of([&] { load_config(with(two, "  max_steps: 650\n")); }),
               Catch::Contains("train.max_steps: must exceed the 650 steps of data.curriculum, so that data.train gets some (got 650)"));
    CHECK(load_config(with(two, "  max_steps: 651\n")).train.max_steps == 651);
}

TEST_CASE("config: moe.layers resolves against the decoder depth", "[config]") {
    using idamoe::core::resolve_moe_layers;
    CHECK(resolve_moe_layers("every_other", 5) == std::vector<int64_t>{0, 2, 4});
    CHECK(resolve_moe_layers("all", 3) == std::vector<int64_t>{0, 1, 2});
    CHECK(resolve_moe_layers("3,1", 4) == std::vector<int64_t>{1, 3});
    CHECK_THROWS_WITH(resolve_moe_layers("7", 4), Catch::Contains("layer 7 does not exist"));
}
