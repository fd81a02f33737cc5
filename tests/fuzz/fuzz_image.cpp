// libFuzzer target: image decoding (stb_image: JPEG/PNG/BMP/GIF) and CLIP/SigLIP preprocessing.
#include "data/images.h"
#include "fuzz_common.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t * data, size_t size) {
    try {
        idamoe::data::ImageLimits limits;
        limits.max_side = 4096;          // keep single inputs fast; the guard logic is what is tested
        limits.max_pixels = 4'000'000;
        auto img = idamoe::data::decode_image_memory(data, size, "fuzz", limits);
        bool pad = size & 2;
        auto cfg = (size & 1) ? idamoe::data::ImageProcessorConfig::clip336(pad) : idamoe::data::ImageProcessorConfig::siglip384(pad);
        torch::Tensor t = idamoe::data::preprocess_image(img, cfg);
        (void)t.sum().item<double>();
    } catch (const std::exception &) {
    }
    return 0;
}
