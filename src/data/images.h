// defines: ImageProcessorConfig, RgbImage, ImageError, ImageLimits, decode_image_file,
//          decode_image_memory, expand_to_square, resize_bicubic, preprocess_image, blank_image,
//          image_token_count
//
// Image decoding (JPEG: libjpeg-turbo, Pillow's decoder, bit-identical pixels, CMYK as Pillow converts
// it; PNG, BMP, GIF first frame: stb_image; gray / gray+alpha / RGBA → RGB by dropping alpha, as PIL's
// convert("RGB")) and the Hugging Face CLIP / SigLIP processor recipe
// (moe_llava_protocol.md §5):
//   pad_to_square: LLaVA expand2square, canvas side max(w,h), image at ((side-w)//2, (side-h)//2),
//                  background int(mean*255) per channel;
//   clip:   resize shortest edge to `size` (long edge int(size*long/short)), centre crop size×size;
//   siglip: resize directly to size×size;
//   then x/255 (float64, cast to float32) and (x - mean) / std in float32, like transformers.
// Resizing is a port of Pillow's ImagingResample (Resample.c) for 8-bit images with the bicubic
// filter (a = -0.5): separable, support scaled by the downscale factor (antialiasing), 22-bit
// fixed-point coefficients, horizontal pass first with a uint8 intermediate. Output pixels are
// bit-identical to PIL's Image.resize(..., BICUBIC); only the pixels the crop keeps are computed.
#pragma once

#include <torch/torch.h>

#include <array>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace idamoe::data {

struct ImageProcessorConfig {
    std::string kind = "clip";   // clip | siglip
    int64_t size = 336;
    std::array<float, 3> mean{0.48145466f, 0.4578275f, 0.40821073f};
    std::array<float, 3> std{0.26862954f, 0.26130258f, 0.27577711f};
    bool pad_to_square = false;  // LLaVA image_aspect_ratio "pad"

    // openai/clip-vit-large-patch14-336 preprocessor_config.json (moe_llava_protocol.md §5)
    static ImageProcessorConfig clip336(bool pad);
    // google/siglip-so400m-patch14-384 preprocessor_config.json (moe_llava_protocol.md §5)
    static ImageProcessorConfig siglip384(bool pad);
    // From a vision tower directory: preprocessor_config.json when present, else config.json's
    // model_type / image_size with the defaults above.
    static ImageProcessorConfig from_dir(const std::string & dir, bool pad);
};

struct ImageError : std::runtime_error {
    using std::runtime_error::runtime_error;
};

struct ImageLimits {
    int64_t max_side = 16384;            // either dimension
    int64_t max_pixels = 100'000'000;    // width × height (decompression-bomb guard)
};

struct RgbImage {
    int width = 0, height = 0;
    std::vector<uint8_t> pixels;  // H × W × 3, row-major
};

// Throws ImageError naming the file for: unreadable, zero-byte, not an image / unsupported format,
// corrupt, truncated (libjpeg runs out of data; as Pillow, no partial image), more than 500
// progressive JPEG scans (a decode-time bomb), dimensions above `limits`.
RgbImage decode_image_file(const std::string & path, const ImageLimits & limits = {});
RgbImage decode_image_memory(const uint8_t * data, size_t n, const std::string & name, const ImageLimits & limits = {});

RgbImage expand_to_square(const RgbImage & img, const std::array<uint8_t, 3> & background);
// PIL Image.resize((w, h), Image.BICUBIC) on an RGB image.
RgbImage resize_bicubic(const RgbImage & img, int out_w, int out_h);

// The full recipe above → float32 [3, size, size].
torch::Tensor preprocess_image(const RgbImage & img, const ImageProcessorConfig & cfg);
// What MoE-LLaVA feeds for text-only samples: zeros [3, size, size] (zero after normalisation).
torch::Tensor blank_image(const ImageProcessorConfig & cfg);

// Tokens one image becomes in the LLM: (image_size / patch_size)^2 from the tower's config.json,
// minus the one token that select_feature "patch" drops (CLIP's CLS; for SigLIP, which has no CLS,
// MoE-LLaVA still drops index 0: 728 — moe_llava_protocol.md §1.1).
int64_t image_token_count(const std::string & vision_dir, const std::string & select_feature);

}  // namespace idamoe::data
