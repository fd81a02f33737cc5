// defines: init_logging, log_level_from_string
//
// spdlog everywhere. On multi-rank runs only rank 0 logs at the configured level; other ranks log
// warnings and errors only, unless logging.all_ranks is set.
#pragma once

#include <spdlog/spdlog.h>

#include <string>

namespace idamoe::core {

spdlog::level::level_enum log_level_from_string(const std::string & level);
void init_logging(const std::string & level, int rank = 0, bool all_ranks = false);

}  // namespace idamoe::core
