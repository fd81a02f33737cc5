// defines: JpegResult, decode_jpeg_memory (internal to data/images.cpp's decode_image_memory)
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace idamoe::data::detail {

struct JpegResult {
    int width = 0, height = 0;     // set from the header even when the limits refuse the file
    std::vector<uint8_t> pixels;   // H × W × 3, as Pillow's Image.open(f).convert("RGB")
    std::vector<uint8_t> scanline; // libjpeg's output row (3 or 4 samples per pixel)
};

// Decodes a JPEG with libjpeg-turbo. Returns false with a message in `error` for a corrupt,
// truncated or unsupported file; with "dimensions" when the header's size exceeds the limits.
bool decode_jpeg_memory(const uint8_t * data, size_t n, int64_t max_side, int64_t max_pixels, JpegResult & out,
                        char * error, size_t error_size);

}  // namespace idamoe::data::detail
