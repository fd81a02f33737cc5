// idamoe-train: the one CLI. Default action trains the stage named by train.stage in the YAML.
//   idamoe-train --config FILE.yaml [--set key.path=value ...] [--resume auto|PATH]
//                [--print-config] [--dry-run] [--inspect-data N] [--log-level LEVEL]
//   idamoe-train bench --model DIR [--batch B] [--seq T] [--steps N] [--warmup W] [--threads K]
//                [--moe ROUTER] [--experts N] [--top-k K] [--vision DIR --images I] [--device cpu|cuda|auto]
// Exit codes: 0 done (or stopped by train.stop_after), 1 runtime failure, 2 configuration/input error,
// 4 stopped by the non-finite guard, 128+N stopped by signal N (a checkpoint was written: --resume auto).
#include "core/config.h"
#include "core/log.h"
#include "core/preflight.h"
#include "data/pipeline.h"
#include "io/checkpoint.h"
#include "train/bench.h"
#include "train/guard.h"
#include "train/loop.h"
#include "train/trainer.h"

#include <CLI/CLI.hpp>

#include <cstdio>
#include <iostream>

using namespace idamoe;

namespace {

int bench_main(int argc, char ** argv) {
    CLI::App app{"idamoe-train bench: training-step throughput of a decoder (dense or MoE, optional vision) on synthetic data"};
    train::BenchOptions o;
    app.add_option("--model", o.model_dir, "HF decoder directory (config.json + safetensors)")->required()->check(CLI::ExistingDirectory);
    app.add_option("--batch", o.batch, "sequences per step")->check(CLI::PositiveNumber);
    app.add_option("--seq", o.seq, "text tokens per sequence")->check(CLI::Range(2, 1 << 20));
    app.add_option("--steps", o.steps, "timed steps")->check(CLI::PositiveNumber);
    app.add_option("--warmup", o.warmup, "untimed steps first")->check(CLI::NonNegativeNumber);
    app.add_option("--threads", o.threads, "intra-op threads (0 = LibTorch default)")->check(CLI::NonNegativeNumber);
    app.add_option("--moe", o.moe, "upcycle every other layer with this router: ida|linear_aux|st_moe|xmoe|auxfree|deepseek");
    app.add_option("--experts", o.experts, "experts per MoE layer")->check(CLI::PositiveNumber);
    app.add_option("--top-k", o.top_k, "experts per token")->check(CLI::PositiveNumber);
    app.add_option("--vision", o.vision_dir, "HF CLIP/SigLIP directory: prepend projected image features")->check(CLI::ExistingDirectory);
    app.add_option("--images", o.images, "images per sequence (with --vision)")->check(CLI::PositiveNumber);
    app.add_option("--device", o.device, "auto|cpu|cuda")->check(CLI::IsMember({"auto", "cpu", "cuda"}));
    app.add_flag("--activation-checkpointing", o.activation_checkpointing, "recompute decoder layers in backward");
    try {
        app.parse(argc, argv);
    } catch (const CLI::ParseError & e) {
        return app.exit(e);
    }
    core::init_logging("warn");
    try {
        std::cout << train::run_bench(o).dump() << std::endl;
    } catch (const std::exception & e) {
        std::fprintf(stderr, "idamoe-train bench: %s\n", e.what());
        return 1;
    }
    return 0;
}

}  // namespace

int main(int argc, char ** argv) {
    if (argc > 1 && std::string(argv[1]) == "bench") return bench_main(argc - 1, argv + 1);

    CLI::App app{"idamoe-train: LLaVA-style vision-language MoE training with IDA-MoE routing (arXiv 2510.16448)"};
    app.set_version_flag("--version", std::string("idamoe ") + IDAMOE_VERSION);
    app.footer("Subcommand: idamoe-train bench --model DIR ... (see idamoe-train bench --help)");

    std::string config_file;
    std::vector<std::string> overrides;
    std::string resume;
    std::string log_level;
    bool print_config = false, dry_run = false;
    int64_t inspect_n = 0;

    app.add_option("-c,--config", config_file, "YAML config (may name a base: file)")
        ->group("Configuration")->required()->check(CLI::ExistingFile);
    app.add_option("--set", overrides, "Override a key after loading, e.g. --set train.lr=1e-4 (repeatable)")
        ->group("Configuration")->take_all();
    app.add_flag("--print-config", print_config, "Print the fully resolved config as YAML and exit")->group("Configuration");
    app.add_flag("--dry-run", dry_run, "Validate the config and every input path, then exit")->group("Configuration");
    app.add_option("--inspect-data", inspect_n, "Print the first N samples as the model will see them (labels marked), then exit")
        ->group("Configuration")->check(CLI::PositiveNumber);
    app.add_option("--resume", resume, "Resume from 'auto' (the newest complete checkpoint) or a checkpoint path")
        ->group("Run control");
    app.add_option("--log-level", log_level, "trace|debug|info|warn|error (overrides logging.level)")
        ->group("Logging")->check(CLI::IsMember({"trace", "debug", "info", "warn", "error"}));

    try {
        app.parse(argc, argv);
    } catch (const CLI::ParseError & e) {
        return app.exit(e);
    }

    core::Config cfg;
    try {
        cfg = core::load_config(config_file, overrides);
    } catch (const core::ConfigError & e) {
        std::fprintf(stderr, "idamoe-train: config error: %s\n", e.what());
        return 2;
    } catch (const std::exception & e) {
        std::fprintf(stderr, "idamoe-train: %s\n", e.what());
        return 2;
    }
    if (!log_level.empty()) cfg.logging.level = log_level;

    if (print_config) {
        std::cout << core::config_to_yaml(cfg);
        return 0;
    }
    core::init_logging(cfg.logging.level);

    auto problems = core::preflight_problems(cfg);
    if (!problems.empty()) {
        for (const auto & p : problems) std::fprintf(stderr, "idamoe-train: %s: %s\n", config_file.c_str(), p.c_str());
        return 2;
    }
    if (dry_run) {
        spdlog::info("dry run: config {} and all inputs it names are valid (stage {})", config_file, cfg.train.stage);
        return 0;
    }
    if (inspect_n > 0) {
        try {
            const int64_t mismatches = data::inspect_samples(cfg, inspect_n, std::cout);
            return mismatches > 0 ? 2 : 0;
        } catch (const std::exception & e) {
            std::fprintf(stderr, "idamoe-train: --inspect-data: %s\n", e.what());
            return 2;
        }
    }

    train::install_stop_handlers();
    try {
        const train::StageRun run = train::run_stage(cfg, resume);
        if (run.stop_reason == "signal") return 128 + train::stop_signal();
        return train::kExitOk;
    } catch (const core::ConfigError & e) {
        std::fprintf(stderr, "idamoe-train: %s\n", e.what());
        return train::kExitConfig;
    } catch (const io::CheckpointError & e) {
        std::fprintf(stderr, "idamoe-train: checkpoint: %s\n", e.what());
        return resume.empty() ? train::kExitRuntime : train::kExitConfig;
    } catch (const train::TrainingStopped & e) {
        std::fprintf(stderr, "idamoe-train: %s\n", e.what());
        return train::kExitNonFinite;
    } catch (const std::exception & e) {
        std::fprintf(stderr, "idamoe-train: error: %s\n", e.what());
        return train::kExitRuntime;
    }
}
