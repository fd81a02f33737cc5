// defines: preflight_problems — what --dry-run checks before any training starts
#pragma once

#include "core/config.h"

#include <string>
#include <vector>

namespace idamoe::core {

// Every input the config names (model and vision directories, dataset files, image roots, the
// previous stage's output) is checked to exist and be readable. Returns one line per problem.
std::vector<std::string> preflight_problems(const Config & cfg);

}  // namespace idamoe::core
