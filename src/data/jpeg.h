// defines: JpegResult, decode_jpeg_memory (internal to data/images.cpp's decode_image_memory)
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <vector>

namespace idamoe::data::detail {

struct JpegResult {
    int width = 0, height = 0;     // set from the header even when the limits refuse the file
    std::vector<uint8_t> pixels;   // H × W × 3, as Pillow's Image.open(f).convert("RGB")
    std::vector<uint8_t> scanline; // libjpeg's output row (3 or 4 samples per pixel)
};

enum class JpegStatus { ok, size_refused, corrupt };

// Decodes a JPEG with libjpeg-turbo. `accept_size(width, height)` sees the header's size before
// anything is allocated (size_refused when it says no); corrupt, truncated or unsupported files give
// `corrupt` with libjpeg's message in `error`.
JpegStatus decode_jpeg_memory(const uint8_t * data, size_t n, const std::function<bool(int64_t, int64_t)> & accept_size,
                              JpegResult & out, char * error, size_t error_size);

}  // namespace idamoe::data::detail
