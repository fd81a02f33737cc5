// libFuzzer target: the YAML config loader, with base: chains and --set overrides.
// Input layout: the first line is a --set override ("key.path=value"), the rest is the YAML file.
// A fixed base file exists next to it so that `base: base.yaml` exercises the merge path.
#include "core/config.h"
#include "fuzz_common.h"

#include <fstream>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t * data, size_t size) {
    static const std::string dir = [] {
        std::string d = idamoe::fuzz::fuzz_temp_dir();
        std::ofstream(d + "/base.yaml") << "model:\n  llm_path: m\ndata:\n  train:\n    - json: d.json\n";
        return d;
    }();
    std::string text(reinterpret_cast<const char *>(data), size);
    std::vector<std::string> overrides;
    auto nl = text.find('\n');
    if (nl != std::string::npos && text.rfind("--set ", 0) == 0) {
        overrides.push_back(text.substr(6, nl - 6));
        text = text.substr(nl + 1);
    }
    try {
        auto cfg = idamoe::core::load_config_from_string(text, "fuzz.yaml", dir, overrides);
        (void)idamoe::core::config_to_yaml(cfg);
    } catch (const std::exception &) {
    }
    return 0;
}
