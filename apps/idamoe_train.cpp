// idamoe-train: the one CLI. Default action trains the stage named by train.stage in the YAML.
//   idamoe-train --config FILE.yaml [--set key.path=value ...] [--resume auto|PATH]
//                [--print-config] [--dry-run] [--log-level LEVEL]
#include "core/config.h"
#include "core/log.h"
#include "core/preflight.h"

#include <CLI/CLI.hpp>

#include <cstdio>
#include <iostream>

using namespace idamoe;

int main(int argc, char ** argv) {
    CLI::App app{"idamoe-train: LLaVA-style vision-language MoE training with IDA-MoE routing (arXiv 2510.16448)"};
    app.set_version_flag("--version", std::string("idamoe ") + IDAMOE_VERSION);

    std::string config_file;
    std::vector<std::string> overrides;
    std::string resume;
    std::string log_level;
    bool print_config = false, dry_run = false;

    app.add_option("-c,--config", config_file, "YAML config (may name a base: file)")
        ->group("Configuration")->required()->check(CLI::ExistingFile);
    app.add_option("--set", overrides, "Override a key after loading, e.g. --set train.lr=1e-4 (repeatable)")
        ->group("Configuration")->take_all();
    app.add_flag("--print-config", print_config, "Print the fully resolved config as YAML and exit")->group("Configuration");
    app.add_flag("--dry-run", dry_run, "Validate the config and every input path, then exit")->group("Configuration");
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
    std::fprintf(stderr, "idamoe-train: training is not built yet in this version (issue #6); use --dry-run\n");
    return 3;
}
