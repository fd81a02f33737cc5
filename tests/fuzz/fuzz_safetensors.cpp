// libFuzzer target: the safetensors header/offset parser and tensor materialisation.
#include "fuzz_common.h"
#include "io/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t * data, size_t size) {
    std::string path = idamoe::fuzz::write_bytes("model.safetensors", data, size);
    try {
        idamoe::io::SafetensorsFile f(path);
        for (const auto & info : f.tensors()) {
            torch::Tensor t = f.get(info.name);
            if (t.numel() > 0) (void)t.sum().item<double>();
        }
    } catch (const std::exception &) {
    }
    return 0;
}
