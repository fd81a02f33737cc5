#include "core/log.h"

#include <spdlog/sinks/stdout_color_sinks.h>

#include <stdexcept>

namespace idamoe::core {

spdlog::level::level_enum log_level_from_string(const std::string & level) {
    if (level == "trace") return spdlog::level::trace;
    if (level == "debug") return spdlog::level::debug;
    if (level == "info") return spdlog::level::info;
    if (level == "warn") return spdlog::level::warn;
    if (level == "error") return spdlog::level::err;
    throw std::invalid_argument("log level: expected trace|debug|info|warn|error, got '" + level + "'");
}

void init_logging(const std::string & level, int rank, bool all_ranks) {
    auto lvl = log_level_from_string(level);
    if (rank != 0 && !all_ranks && lvl < spdlog::level::warn) lvl = spdlog::level::warn;
    auto logger = spdlog::get("idamoe");
    if (!logger) logger = spdlog::stderr_color_mt("idamoe");
    spdlog::set_default_logger(logger);
    spdlog::set_level(lvl);
    if (rank == 0 && !all_ranks) spdlog::set_pattern("[%H:%M:%S.%e] %^%l%$ %v");
    else spdlog::set_pattern("[%H:%M:%S.%e] [rank " + std::to_string(rank) + "] %^%l%$ %v");
}

}  // namespace idamoe::core
