// libFuzzer target: Hugging Face config.json parsing for decoders (qwen2, stablelm) and vision towers
// (clip, siglip), and building a model from whatever config survives validation when it is small.
#include "fuzz_common.h"
#include "model/hf_config.h"
#include "model/vision_tower.h"

#include <nlohmann/json.hpp>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t * data, size_t size) {
    std::string text(reinterpret_cast<const char *>(data), size);
    try {
        nlohmann::json j = nlohmann::json::parse(text);
        auto cfg = idamoe::model::decoder_config_from_json(j, "fuzz/config.json");
        (void)idamoe::model::decoder_parameter_count(cfg);
    } catch (const std::exception &) {
    }
    try {
        auto vcfg = idamoe::model::vision_config_from_json_text(text, "fuzz/config.json");
        (void)idamoe::model::vision_tower_param_count(vcfg, true);
    } catch (const std::exception &) {
    }
    return 0;
}
