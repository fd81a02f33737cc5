// libFuzzer target: image decoding (stb_image: JPEG/PNG/BMP/GIF) and CLIP/SigLIP preprocessing.
//
// Speed: resampling every input to 336/384 px made this target run at ~80 execs/s under ASan, most of
// it in the bicubic resize of ordinary inputs. The resampler's code paths (up/down-scaling, crop, pad)
// do not depend on the target size, so 15 of 16 inputs use a small target (8..71 px, from the input
// size bits) and every 16th the real 336/384 px; the decode limits are kept small for the same reason
// (the guard logic is what is tested, not large images).
#include "data/images.h"
#include "fuzz_common.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t * data, size_t size) {
    try {
        idamoe::data::ImageLimits limits;
        limits.max_side = 4096;
        limits.max_pixels = 1'000'000;
        auto img = idamoe::data::decode_image_memory(data, size, "fuzz", limits);
        const bool pad = size & 2;
        auto cfg = (size & 1) ? idamoe::data::ImageProcessorConfig::clip336(pad) : idamoe::data::ImageProcessorConfig::siglip384(pad);
        if ((size >> 2) % 16 != 0) cfg.size = 8 + static_cast<int64_t>((size >> 6) % 64);
        torch::Tensor t = idamoe::data::preprocess_image(img, cfg);
        (void)t.sum().item<double>();
    } catch (const std::exception &) {
    }
    return 0;
}
