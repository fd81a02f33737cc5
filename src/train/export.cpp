// defines: export_hf_dir, resolve_init_dir
#include "train/export.h"

#include "io/checkpoint.h"

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <stdexcept>

namespace fs = std::filesystem;

namespace idamoe::train {

std::string export_hf_dir(const std::string & out_dir, const io::TensorMap & weights, const nlohmann::json & config_json,
                          const std::string & tokenizer_src_dir, int64_t shard_bytes) {
    const fs::path final_dir(out_dir), tmp(out_dir + ".tmp");
    std::error_code ec;
    fs::remove_all(tmp, ec);
    fs::create_directories(tmp);
    // Greedy sharding in name order (deterministic).
    std::vector<io::TensorMap> shards(1);
    int64_t cur = 0;
    for (const auto & [name, t] : weights) {
        const int64_t nbytes = t.numel() * static_cast<int64_t>(t.element_size());
        if (cur > 0 && cur + nbytes > shard_bytes) {
            shards.emplace_back();
            cur = 0;
        }
        shards.back()[name] = t;
        cur += nbytes;
    }
    int64_t total = 0;
    nlohmann::ordered_json weight_map = nlohmann::ordered_json::object();
    for (size_t i = 0; i < shards.size(); ++i) {
        char buf[64];
        std::snprintf(buf, sizeof buf, "model-%05zu-of-%05zu.safetensors", i + 1, shards.size());
        const std::string file = shards.size() == 1 ? "model.safetensors" : buf;
        total += static_cast<int64_t>(io::write_safetensors_checked((tmp / file).string(), shards[i]).first);
        for (const auto & kv : shards[i]) weight_map[kv.first] = file;
    }
    auto write_json = [&](const std::string & file, const std::string & text) {
        std::ofstream out(tmp / file, std::ios::binary);
        out << text;
        if (!out.flush()) throw std::runtime_error("export: cannot write " + (tmp / file).string());
    };
    if (shards.size() > 1) {
        nlohmann::ordered_json index = {{"metadata", {{"total_size", total}}}, {"weight_map", weight_map}};
        write_json("model.safetensors.index.json", index.dump(2) + "\n");
    }
    write_json("config.json", config_json.dump(2) + "\n");
    static const char * kTokenizerFiles[] = {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                                             "vocab.json", "merges.txt", "tokenizer.model", "added_tokens.json",
                                             "generation_config.json", "qwen.tiktoken"};
    if (!tokenizer_src_dir.empty() && fs::is_regular_file(tokenizer_src_dir)) {
        // data.tokenizer named one file (e.g. a SentencePiece .model): copy it under its own name.
        fs::copy_file(tokenizer_src_dir, tmp / fs::path(tokenizer_src_dir).filename());
    } else if (!tokenizer_src_dir.empty())
        for (const char * f : kTokenizerFiles)
            if (fs::exists(fs::path(tokenizer_src_dir) / f)) fs::copy_file(fs::path(tokenizer_src_dir) / f, tmp / f);
    fs::remove_all(final_dir, ec);
    fs::rename(tmp, final_dir);
    return final_dir.string();
}

std::string resolve_init_dir(const std::string & init_from) {
    if (init_from.empty()) throw std::runtime_error("train.init_from is empty; stages 2 and 3 start from the previous stage's output_dir");
    const fs::path p(init_from);
    if (fs::exists(p / "hf" / "config.json")) return (p / "hf").string();
    if (fs::exists(p / "config.json")) return p.string();
    throw std::runtime_error("train.init_from " + init_from + ": neither " + (p / "hf" / "config.json").string() + " nor " +
                             (p / "config.json").string() + " exists (did the previous stage finish? its export is written at the end)");
}

}  // namespace idamoe::train
