// defines: decode_jpeg_memory
//
// JPEG decoding with libjpeg-turbo, the library Pillow decodes with (Debian's python3-pil links the
// same libjpeg62-turbo): same IDCT (JDCT_ISLOW), same fancy chroma upsampling, so pixels equal
// Image.open(f).convert("RGB") bit for bit, which stb_image's own decoder did not (up to 24 levels,
// tests/unit/test_images.cpp). libjpeg-turbo is also continuously fuzzed (OSS-Fuzz); stb_image
// 2.27's JPEG path wrote out of bounds on inputs fuzz_image found within seconds.
//
// libjpeg reports fatal errors through error_exit, which must not return: the standard
// setjmp/longjmp pattern below. Only trivially destructible locals live between setjmp and
// longjmp; the output buffer is owned by the caller.
#include "data/jpeg.h"

#include <csetjmp>
#include <cstdio>
#include <cstring>

#include <jerror.h>
#include <jpeglib.h>

namespace idamoe::data::detail {

namespace {

// libjpeg-turbo's fuzzers and djpeg -maxscans use 500: a progressive file with thousands of tiny
// scans otherwise costs minutes of CPU (a decompression-time bomb).
constexpr int kMaxScans = 500;

struct ErrorManager {
    jpeg_error_mgr pub;
    std::jmp_buf jump;
    char message[JMSG_LENGTH_MAX];
};

[[noreturn]] void on_error(j_common_ptr cinfo) {
    auto * err = reinterpret_cast<ErrorManager *>(cinfo->err);
    (*cinfo->err->format_message)(cinfo, err->message);
    std::longjmp(err->jump, 1);
}

// Warnings (level -1) are what Pillow also accepts ("Corrupt JPEG data: N extraneous bytes"), except
// running out of data: Pillow refuses a truncated file ("image file is truncated"), and so do we.
void on_message(j_common_ptr cinfo, int level) {
    if (level == -1 && cinfo->err->msg_code == JWRN_JPEG_EOF) on_error(cinfo);
    if (level == -1) cinfo->err->num_warnings++;
}

void on_progress(j_common_ptr cinfo) {
    auto * d = reinterpret_cast<j_decompress_ptr>(cinfo);
    if (d->is_decompressor && d->input_scan_number > kMaxScans) {
        std::snprintf(reinterpret_cast<ErrorManager *>(cinfo->err)->message, JMSG_LENGTH_MAX,
                      "more than %d progressive scans", kMaxScans);
        std::longjmp(reinterpret_cast<ErrorManager *>(cinfo->err)->jump, 2);
    }
}

void silence(j_common_ptr) {}

// Pillow's Convert.c cmyk2rgb (MULDIV255 rounding), after its JPEG plugin's "CMYK;I" raw mode:
// Pillow assumes Adobe's inverted CMYK for every 4-channel JPEG.
inline uint8_t cmyk_channel(int c_inverted, int k_inverted) {
    const int c = 255 - c_inverted, nk = k_inverted;  // nk = 255 - k
    const int tmp = c * nk + 128;
    const int v = nk - (((tmp >> 8) + tmp) >> 8);
    return static_cast<uint8_t>(v < 0 ? 0 : (v > 255 ? 255 : v));
}

}  // namespace

// No exception crosses libjpeg's frames: errors come back as a status.
JpegStatus decode_jpeg_memory(const uint8_t * data, size_t n, const std::function<bool(int64_t, int64_t)> & accept_size,
                              JpegResult & out, char * error, size_t error_size) {
    jpeg_decompress_struct cinfo;
    ErrorManager err;
    jpeg_progress_mgr progress;
    std::memset(&cinfo, 0, sizeof cinfo);
    cinfo.err = jpeg_std_error(&err.pub);
    err.pub.error_exit = on_error;
    err.pub.emit_message = on_message;
    err.pub.output_message = silence;
    err.message[0] = '\0';
    out.width = out.height = 0;

    if (setjmp(err.jump)) {
        std::snprintf(error, error_size, "%s", err.message);
        jpeg_destroy_decompress(&cinfo);
        return JpegStatus::corrupt;
    }
    jpeg_create_decompress(&cinfo);
    progress.progress_monitor = on_progress;
    cinfo.progress = &progress;
    jpeg_mem_src(&cinfo, data, static_cast<unsigned long>(n));
    jpeg_read_header(&cinfo, TRUE);
    out.width = static_cast<int>(cinfo.image_width);
    out.height = static_cast<int>(cinfo.image_height);
    if (!accept_size(cinfo.image_width, cinfo.image_height)) {
        jpeg_destroy_decompress(&cinfo);
        return JpegStatus::size_refused;
    }
    const bool cmyk = cinfo.jpeg_color_space == JCS_CMYK || cinfo.jpeg_color_space == JCS_YCCK;
    cinfo.out_color_space = cmyk ? JCS_CMYK : JCS_RGB;
    jpeg_start_decompress(&cinfo);
    const size_t w = cinfo.output_width, h = cinfo.output_height, comps = static_cast<size_t>(cinfo.output_components);
    out.width = static_cast<int>(w);
    out.height = static_cast<int>(h);
    out.pixels.resize(w * h * 3);
    out.scanline.resize(w * comps);
    while (cinfo.output_scanline < cinfo.output_height) {
        const size_t y = cinfo.output_scanline;
        JSAMPROW row = out.scanline.data();
        jpeg_read_scanlines(&cinfo, &row, 1);
        uint8_t * dst = out.pixels.data() + y * w * 3;
        if (!cmyk) {
            std::memcpy(dst, row, w * 3);
            continue;
        }
        for (size_t x = 0; x < w; ++x) {
            const uint8_t * px = row + x * 4;
            for (int c = 0; c < 3; ++c) dst[x * 3 + c] = cmyk_channel(px[c], px[3]);
        }
    }
    jpeg_finish_decompress(&cinfo);
    jpeg_destroy_decompress(&cinfo);
    return JpegStatus::ok;
}

}  // namespace idamoe::data::detail
