// libFuzzer target: model.safetensors.index.json (sharded checkpoints) resolution.
#include "fuzz_common.h"
#include "io/safetensors.h"

#include <filesystem>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t * data, size_t size) {
    namespace fs = std::filesystem;
    static const std::string dir = [] {
        std::string d = idamoe::fuzz::fuzz_temp_dir() + "/shards";
        fs::create_directories(d);
        // One valid shard that an index may point at.
        idamoe::io::save_safetensors(d + "/model-00001-of-00001.safetensors",
                                     {{"a.weight", torch::ones({2, 3})}, {"b.bias", torch::zeros({3})}});
        return d;
    }();
    std::string path = dir + "/model.safetensors.index.json";
    FILE * f = std::fopen(path.c_str(), "wb");
    if (size) std::fwrite(data, 1, size, f);
    std::fclose(f);
    try {
        auto tensors = idamoe::io::load_checkpoint_dir(dir);
        (void)tensors.size();
    } catch (const std::exception &) {
    }
    return 0;
}
