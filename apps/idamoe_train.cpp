// idamoe-train: the one CLI. Default action trains the stage named by train.stage in the YAML.
//   idamoe-train --config FILE.yaml [--set key.path=value ...] [--resume auto|PATH]
//                [--print-config] [--dry-run] [--inspect-data N] [--log-level LEVEL]
//   idamoe-train bench --model DIR [--batch B] [--seq T] [--steps N] [--warmup W] [--threads K]
//                [--moe ROUTER] [--experts N] [--top-k K] [--vision DIR --images I] [--device cpu|cuda|auto]
//                [--dtype float32|bfloat16]
// Exit codes: 0 done (or stopped by train.stop_after), 1 runtime failure, 2 configuration/input error,
// 4 stopped by the non-finite guard, 128+N stopped by signal N (a checkpoint was written: --resume auto).
#include "core/config.h"
#include "core/log.h"
#include "core/preflight.h"
#include "core/runtime.h"
#include "data/pipeline.h"
#include "io/checkpoint.h"
#include "train/bench.h"
#include "train/eval_model.h"
#include "train/guard.h"
#include "train/loop.h"
#include "train/trainer.h"

#include <CLI/CLI.hpp>

#include <csignal>
#include <cstdio>
#include <iostream>
#include <optional>

using namespace idamoe;

namespace {

// Parses the command line, then loads the config file it names (with --set overrides); returns the exit
// code when either fails (CLI11's for --help/usage, 2 for a config error), nothing when cfg is ready.
std::optional<int> parse_and_load_config(CLI::App & app, int argc, char ** argv, const char * prog,
                                         const std::string & config_file, const std::vector<std::string> & overrides,
                                         core::Config & cfg) {
    try {
        app.parse(argc, argv);
    } catch (const CLI::ParseError & e) {
        return app.exit(e);
    }
    try {
        cfg = core::load_config(config_file, overrides);
    } catch (const core::ConfigError & e) {
        std::fprintf(stderr, "%s: config error: %s\n", prog, e.what());
        return 2;
    } catch (const std::exception & e) {
        std::fprintf(stderr, "%s: %s\n", prog, e.what());
        return 2;
    }
    return std::nullopt;
}

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
    app.add_option("--dtype", o.dtype, "float32|bfloat16 (bf16 autocast, fp32 master weights; CUDA only)")
        ->check(CLI::IsMember({"float32", "bfloat16"}));
    app.add_flag("--activation-checkpointing", o.activation_checkpointing, "recompute decoder layers in backward");
    app.add_option("--lr", o.lr, "constant AdamW learning rate (no weight decay), as the HF peer bench")->check(CLI::NonNegativeNumber);
    app.add_option("--grad-clip", o.grad_clip, "clip the global gradient norm (0 = off, as the HF peer bench)")->check(CLI::NonNegativeNumber);
    app.add_option("--seed", o.seed, "token/weight-init seed; the first batch equals torch.randint(0, V, (B, T), generator=Generator().manual_seed(seed))");
    app.add_flag("--same-batch", o.same_batch, "train on the first batch at every step (the HF peer bench does)");
    app.add_flag("--matmul-reference", o.matmul_reference, "also report a 1024x1024 fp32 matmul's GFLOP/s (matmul1024_gflops)");
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

int eval_main(int argc, char ** argv) {
    CLI::App app{"idamoe-train eval: answer a LLaVA question JSONL greedily with a trained stage and score it"};
    std::string config_file;
    std::vector<std::string> overrides;
    train::EvalRunOptions o;
    app.add_option("-c,--config", config_file, "the stage's YAML config (template, vision tower, MoE settings)")
        ->required()->check(CLI::ExistingFile);
    app.add_option("--set", overrides, "Override a config key (repeatable)")->take_all();
    app.add_option("--checkpoint", o.checkpoint, "a stage output_dir or its hf/ export")->required();
    app.add_option("--questions", o.questions, "LLaVA question JSONL {question_id, image, text[, category, answer]}")
        ->required()->check(CLI::ExistingFile);
    app.add_option("--image-root", o.image_root, "folder the questions' image paths are relative to");
    app.add_option("--out", o.out_dir, "output folder: answers.jsonl, scores.json, routing.jsonl")->required();
    app.add_option("--limit", o.limit, "answer only the first N questions")->check(CLI::NonNegativeNumber);
    app.add_option("--max-new-tokens", o.max_new_tokens, "greedy tokens per answer")->check(CLI::PositiveNumber);
    app.add_option("--model-id", o.model_id, "model_id written into answers.jsonl");
    core::Config cfg;
    if (auto rc = parse_and_load_config(app, argc, argv, "idamoe-train eval", config_file, overrides, cfg)) return *rc;
    core::init_logging(cfg.logging.level);
    try {
        auto scores = train::run_model_eval(cfg, o);
        std::printf("%-12s %8s %8s\n", "category", "correct", "accuracy");
        for (const auto & [cat, s] : scores)
            std::printf("%-12s %4lld/%-4lld %7.1f%%\n", cat.c_str(), static_cast<long long>(s.correct),
                        static_cast<long long>(s.total), 100.0 * s.accuracy());
    } catch (const std::exception & e) {
        std::fprintf(stderr, "idamoe-train eval: %s\n", e.what());
        return 2;
    }
    return 0;
}

}  // namespace

int main(int argc, char ** argv) {
    core::tune_cpu_runtime(argv);
    if (argc > 1 && std::string(argv[1]) == "bench") return bench_main(argc - 1, argv + 1);
    if (argc > 1 && std::string(argv[1]) == "eval") return eval_main(argc - 1, argv + 1);

    CLI::App app{"idamoe-train: LLaVA-style vision-language MoE training with IDA-MoE routing (arXiv 2510.16448)"};
    app.set_version_flag("--version", std::string("idamoe ") + IDAMOE_VERSION);
    app.footer("Subcommands: idamoe-train bench --model DIR ...   idamoe-train eval --config X --checkpoint DIR --questions Q --out DIR\n(see idamoe-train bench --help, idamoe-train eval --help)");

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

    core::Config cfg;
    if (auto rc = parse_and_load_config(app, argc, argv, "idamoe-train", config_file, overrides, cfg)) return *rc;
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
    // Exceeding a file-size limit (ulimit -f, some quota setups) then fails write() with EFBIG, which
    // the checkpoint writer reports like a full disk and survives, instead of SIGXFSZ killing the
    // process with a core dump in the middle of a save.
    std::signal(SIGXFSZ, SIG_IGN);
    try {
        const train::StageRun run = train::run_stage(cfg, resume);
        if (run.stop_reason == "signal") return 128 + train::stop_signal();
        return train::kExitOk;
    } catch (const core::ConfigError & e) {
        std::fprintf(stderr, "idamoe-train: %s\n", e.what());
        return train::kExitConfig;
    } catch (const io::CheckpointWriteError & e) {
        std::fprintf(stderr, "idamoe-train: checkpoint: %s\n", e.what());
        return train::kExitRuntime;
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
