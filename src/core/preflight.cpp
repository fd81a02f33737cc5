#include "core/preflight.h"

#include <filesystem>
#include <fstream>

namespace fs = std::filesystem;

namespace idamoe::core {
namespace {

void check_model_dir(const std::string & key, const std::string & dir, std::vector<std::string> & out) {
    if (!fs::is_directory(dir)) {
        out.push_back(key + ": " + dir + " is not a directory");
        return;
    }
    fs::path cfg = fs::path(dir) / "config.json";
    std::ifstream in(cfg);
    if (!in) out.push_back(key + ": " + cfg.string() + " is missing or unreadable");
    bool has_weights = fs::exists(fs::path(dir) / "model.safetensors") ||
                       fs::exists(fs::path(dir) / "model.safetensors.index.json") ||
                       fs::exists(fs::path(dir) / "pytorch_model.bin");
    if (!has_weights)
        out.push_back(key + ": " + dir + " has no model.safetensors, model.safetensors.index.json or pytorch_model.bin");
}

void check_datasets(const std::string & key, const std::vector<DatasetEntry> & files, std::vector<std::string> & out) {
    for (size_t i = 0; i < files.size(); ++i) {
        const auto & e = files[i];
        std::string k = key + "[" + std::to_string(i) + "]";
        std::ifstream in(e.json);
        if (!in) out.push_back(k + ".json: " + e.json + " is missing or unreadable");
        if (!e.image_root.empty() && !fs::is_directory(e.image_root))
            out.push_back(k + ".image_root: " + e.image_root + " is not a directory");
    }
}

}  // namespace

std::vector<std::string> preflight_problems(const Config & cfg) {
    std::vector<std::string> out;
    check_model_dir("model.llm_path", cfg.model.llm_path, out);
    if (!cfg.vision.path.empty()) check_model_dir("vision.path", cfg.vision.path, out);
    check_datasets("data.train", cfg.data.train, out);
    for (size_t i = 0; i < cfg.data.curriculum.size(); ++i)
        check_datasets("data.curriculum[" + std::to_string(i) + "].train", cfg.data.curriculum[i].train, out);
    if (!cfg.data.tokenizer.empty() && !fs::exists(cfg.data.tokenizer))
        out.push_back("data.tokenizer: " + cfg.data.tokenizer + " does not exist");
    if (cfg.train.stage >= 2 && !fs::is_directory(cfg.train.init_from))
        out.push_back("train.init_from: " + cfg.train.init_from + " is not a directory (stage " +
                      std::to_string(cfg.train.stage) + " starts from the previous stage's output)");
    fs::path outp = cfg.train.output_dir;
    fs::path parent = outp.has_parent_path() ? outp.parent_path() : fs::path(".");
    if (fs::exists(outp) && !fs::is_directory(outp))
        out.push_back("train.output_dir: " + cfg.train.output_dir + " exists and is not a directory");
    (void)parent;
    return out;
}

}  // namespace idamoe::core
