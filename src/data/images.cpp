// defines: decode_image_*, expand_to_square, resize_bicubic, preprocess_image, blank_image,
//          ImageProcessorConfig presets, image_token_count
//
// Legend: src = decoded RGB image (H×W×3 uint8), tmp = horizontal-pass output, out = float CHW.
#include "data/images.h"

#include "data/jpeg.h"

#include <nlohmann/json.hpp>

#include <cmath>
#include <filesystem>
#include <fstream>

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-function"
#pragma GCC diagnostic ignored "-Wsign-compare"
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"
#pragma GCC diagnostic ignored "-Wimplicit-fallthrough"
#define STB_IMAGE_STATIC
#define STB_IMAGE_IMPLEMENTATION
#define STBI_NO_STDIO
#define STBI_ONLY_PNG
#define STBI_ONLY_BMP
#define STBI_ONLY_GIF
#include <stb/stb_image.h>
#pragma GCC diagnostic pop

namespace idamoe::data {

namespace {

// ---- Pillow Resample.c, 8 bits per channel ----------------------------------------------------
constexpr int kPrecisionBits = 32 - 8 - 2;

double bicubic_filter(double x) {  // Pillow: a = -0.5, support 2
    constexpr double a = -0.5;
    if (x < 0.0) x = -x;
    if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
    if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
    return 0.0;
}

struct Coeffs {
    int ksize = 0;
    std::vector<int> xmin, xcount;  // per output index: first source index, number of taps
    std::vector<int32_t> k;         // out × ksize fixed-point weights
};

// precompute_coeffs + normalize_coeffs_8bpc for box (0, in_size).
Coeffs precompute(int in_size, int out_size) {
    Coeffs c;
    double scale = static_cast<double>(in_size) / out_size, filterscale = scale;
    if (filterscale < 1.0) filterscale = 1.0;
    double support = 2.0 * filterscale;
    c.ksize = static_cast<int>(std::ceil(support)) * 2 + 1;
    c.xmin.resize(out_size);
    c.xcount.resize(out_size);
    c.k.assign(static_cast<size_t>(out_size) * c.ksize, 0);
    std::vector<double> w(c.ksize);
    for (int xx = 0; xx < out_size; ++xx) {
        double center = (xx + 0.5) * scale, ww = 0.0, ss = 1.0 / filterscale;
        int xmin = static_cast<int>(center - support + 0.5);
        if (xmin < 0) xmin = 0;
        int xmax = static_cast<int>(center + support + 0.5);
        if (xmax > in_size) xmax = in_size;
        xmax -= xmin;
        for (int x = 0; x < xmax; ++x) {
            w[x] = bicubic_filter((x + xmin - center + 0.5) * ss);
            ww += w[x];
        }
        for (int x = 0; x < xmax; ++x) {
            double v = ww != 0.0 ? w[x] / ww : w[x];
            c.k[static_cast<size_t>(xx) * c.ksize + x] =
                v < 0 ? static_cast<int32_t>(-0.5 + v * (1 << kPrecisionBits)) : static_cast<int32_t>(0.5 + v * (1 << kPrecisionBits));
        }
        c.xmin[xx] = xmin;
        c.xcount[xx] = xmax;
    }
    return c;
}

inline uint8_t clip8(int32_t v) {
    if (v >= (1 << kPrecisionBits << 8)) return 255;
    if (v <= 0) return 0;
    return static_cast<uint8_t>(v >> kPrecisionBits);
}

// Resizes src to out_w × out_h but writes only the window [cx0, cx0+cw) × [cy0, cy0+ch) of the
// output into dst (ch × cw × 3). Every written pixel equals PIL's, since PIL computes each output
// pixel independently of the others in both passes.
void resize_window(const RgbImage & src, int out_w, int out_h, int cx0, int cy0, int cw, int ch, uint8_t * dst) {
    const int W = src.width, H = src.height;
    const bool need_h = out_w != W, need_v = out_h != H;
    Coeffs hc = need_h ? precompute(W, out_w) : Coeffs{};
    Coeffs vc = need_v ? precompute(H, out_h) : Coeffs{};
    // Source rows the vertical pass reads for the kept output rows.
    int ry0 = cy0, ry1 = cy0 + ch;
    if (need_v) {
        ry0 = vc.xmin[cy0];
        ry1 = vc.xmin[cy0 + ch - 1] + vc.xcount[cy0 + ch - 1];
        for (int y = cy0; y < cy0 + ch; ++y) {
            ry0 = std::min(ry0, vc.xmin[y]);
            ry1 = std::max(ry1, vc.xmin[y] + vc.xcount[y]);
        }
    }
    // Horizontal pass → tmp rows [ry0, ry1), kept columns only.
    std::vector<uint8_t> tmp(static_cast<size_t>(ry1 - ry0) * cw * 3);
    for (int y = ry0; y < ry1; ++y) {
        const uint8_t * row = src.pixels.data() + static_cast<size_t>(y) * W * 3;
        uint8_t * t = tmp.data() + static_cast<size_t>(y - ry0) * cw * 3;
        if (!need_h) {
            std::memcpy(t, row + static_cast<size_t>(cx0) * 3, static_cast<size_t>(cw) * 3);
            continue;
        }
        for (int xx = 0; xx < cw; ++xx) {
            const int ox = cx0 + xx, xmin = hc.xmin[ox], n = hc.xcount[ox];
            const int32_t * k = hc.k.data() + static_cast<size_t>(ox) * hc.ksize;
            int32_t s0 = 1 << (kPrecisionBits - 1), s1 = s0, s2 = s0;
            const uint8_t * p = row + static_cast<size_t>(xmin) * 3;
            for (int x = 0; x < n; ++x, p += 3) {
                s0 += p[0] * k[x];
                s1 += p[1] * k[x];
                s2 += p[2] * k[x];
            }
            t[xx * 3 + 0] = clip8(s0);
            t[xx * 3 + 1] = clip8(s1);
            t[xx * 3 + 2] = clip8(s2);
        }
    }
    // Vertical pass → dst.
    const size_t stride = static_cast<size_t>(cw) * 3;
    for (int yy = 0; yy < ch; ++yy) {
        uint8_t * d = dst + yy * stride;
        if (!need_v) {
            std::memcpy(d, tmp.data() + static_cast<size_t>(cy0 + yy - ry0) * stride, stride);
            continue;
        }
        const int oy = cy0 + yy, ymin = vc.xmin[oy] - ry0, n = vc.xcount[oy];
        const int32_t * k = vc.k.data() + static_cast<size_t>(oy) * vc.ksize;
        std::vector<int32_t> acc(stride, 1 << (kPrecisionBits - 1));
        for (int y = 0; y < n; ++y) {
            const uint8_t * r = tmp.data() + static_cast<size_t>(ymin + y) * stride;
            const int32_t ky = k[y];
            for (size_t i = 0; i < stride; ++i) acc[i] += r[i] * ky;
        }
        for (size_t i = 0; i < stride; ++i) d[i] = clip8(acc[i]);
    }
}

}  // namespace

ImageProcessorConfig ImageProcessorConfig::clip336(bool pad) {
    ImageProcessorConfig c;
    c.pad_to_square = pad;
    return c;
}

ImageProcessorConfig ImageProcessorConfig::siglip384(bool pad) {
    ImageProcessorConfig c;
    c.kind = "siglip";
    c.size = 384;
    c.mean = {0.5f, 0.5f, 0.5f};
    c.std = {0.5f, 0.5f, 0.5f};
    c.pad_to_square = pad;
    return c;
}

ImageProcessorConfig ImageProcessorConfig::from_dir(const std::string & dir, bool pad) {
    namespace fs = std::filesystem;
    auto read_json = [](const fs::path & p) {
        std::ifstream in(p);
        try {
            return nlohmann::json::parse(in);
        } catch (const nlohmann::json::exception & e) {
            throw ImageError(p.string() + ": malformed JSON: " + e.what());
        }
    };
    ImageProcessorConfig c = clip336(pad);
    fs::path cfg = fs::path(dir) / "config.json";
    if (fs::exists(cfg)) {
        auto j = read_json(cfg);
        std::string type = j.value("model_type", "");
        const auto & v = j.contains("vision_config") ? j["vision_config"] : j;
        std::string vtype = v.value("model_type", type);
        if (vtype.find("siglip") != std::string::npos) c = siglip384(pad);
        if (v.contains("image_size")) c.size = v["image_size"].get<int64_t>();
    }
    fs::path pp = fs::path(dir) / "preprocessor_config.json";
    if (fs::exists(pp)) {
        auto j = read_json(pp);
        if (j.contains("image_mean")) for (int i = 0; i < 3; ++i) c.mean[i] = j["image_mean"][i].get<float>();
        if (j.contains("image_std")) for (int i = 0; i < 3; ++i) c.std[i] = j["image_std"][i].get<float>();
        if (j.contains("crop_size")) {
            const auto & cs = j["crop_size"];
            c.size = cs.is_number() ? cs.get<int64_t>() : cs.value("height", c.size);
        } else if (j.contains("size") && j["size"].is_object() && j["size"].contains("height")) {
            c.size = j["size"]["height"].get<int64_t>();
        }
    }
    return c;
}

RgbImage decode_image_memory(const uint8_t * data, size_t n, const std::string & name, const ImageLimits & limits) {
    if (n == 0) throw ImageError(name + ": empty file (0 bytes)");
    if (n > static_cast<size_t>(INT32_MAX)) throw ImageError(name + ": file too large");
    auto fits = [&](int64_t w, int64_t h) {
        return w > 0 && h > 0 && w <= limits.max_side && h <= limits.max_side && w * h <= limits.max_pixels;
    };
    auto too_large = [&](int64_t w, int64_t h) {
        return ImageError(name + ": image dimensions " + std::to_string(w) + "x" + std::to_string(h) +
                          " exceed the limit (" + std::to_string(limits.max_side) + " per side, " +
                          std::to_string(limits.max_pixels) + " pixels)");
    };
    // JPEG (SOI marker first) goes to libjpeg-turbo, as in Pillow; stb_image is built without its
    // JPEG decoder, so no file reaches it, whatever stb's own format sniffing would make of it.
    if (n >= 2 && data[0] == 0xFF && data[1] == 0xD8) {
        detail::JpegResult jpeg;
        char error[256] = {0};
        switch (detail::decode_jpeg_memory(data, n, fits, jpeg, error, sizeof error)) {
            case detail::JpegStatus::size_refused: throw too_large(jpeg.width, jpeg.height);
            case detail::JpegStatus::corrupt: throw ImageError(name + ": corrupt or truncated JPEG (libjpeg: " + error + ")");
            case detail::JpegStatus::ok: break;
        }
        RgbImage img;
        img.width = jpeg.width;
        img.height = jpeg.height;
        img.pixels = std::move(jpeg.pixels);
        return img;
    }
    int w = 0, h = 0, comp = 0;
    if (!stbi_info_from_memory(data, static_cast<int>(n), &w, &h, &comp))
        throw ImageError(name + ": not a decodable JPEG/PNG/BMP/GIF image (" + stbi_failure_reason() + ")");
    if (!fits(w, h)) throw too_large(w, h);
    int cw = 0, ch = 0, cc = 0;
    stbi_uc * px = stbi_load_from_memory(data, static_cast<int>(n), &cw, &ch, &cc, 3);
    if (!px) throw ImageError(name + ": corrupt image (" + stbi_failure_reason() + ")");
    RgbImage img;
    img.width = cw;
    img.height = ch;
    img.pixels.assign(px, px + static_cast<size_t>(cw) * ch * 3);
    stbi_image_free(px);
    return img;
}

RgbImage decode_image_file(const std::string & path, const ImageLimits & limits) {
    std::ifstream in(path, std::ios::binary | std::ios::ate);
    if (!in) throw ImageError(path + ": cannot open image file");
    std::streamsize size = in.tellg();
    if (size < 0) throw ImageError(path + ": cannot read image file");
    std::vector<uint8_t> buf(static_cast<size_t>(size));
    in.seekg(0);
    if (size > 0 && !in.read(reinterpret_cast<char *>(buf.data()), size)) throw ImageError(path + ": read failed");
    return decode_image_memory(buf.data(), buf.size(), path, limits);
}

RgbImage expand_to_square(const RgbImage & img, const std::array<uint8_t, 3> & bg) {
    if (img.width == img.height) return img;
    const int side = std::max(img.width, img.height);
    const int ox = (side - img.width) / 2, oy = (side - img.height) / 2;
    RgbImage out;
    out.width = out.height = side;
    out.pixels.resize(static_cast<size_t>(side) * side * 3);
    for (size_t i = 0; i < out.pixels.size(); i += 3) {
        out.pixels[i] = bg[0];
        out.pixels[i + 1] = bg[1];
        out.pixels[i + 2] = bg[2];
    }
    for (int y = 0; y < img.height; ++y)
        std::memcpy(out.pixels.data() + (static_cast<size_t>(y + oy) * side + ox) * 3,
                    img.pixels.data() + static_cast<size_t>(y) * img.width * 3, static_cast<size_t>(img.width) * 3);
    return out;
}

RgbImage resize_bicubic(const RgbImage & img, int out_w, int out_h) {
    if (out_w <= 0 || out_h <= 0) throw ImageError("resize to a non-positive size");
    RgbImage out;
    out.width = out_w;
    out.height = out_h;
    out.pixels.resize(static_cast<size_t>(out_w) * out_h * 3);
    resize_window(img, out_w, out_h, 0, 0, out_w, out_h, out.pixels.data());
    return out;
}

torch::Tensor preprocess_image(const RgbImage & in, const ImageProcessorConfig & cfg) {
    if (cfg.kind != "clip" && cfg.kind != "siglip") throw ImageError("unknown image processor kind '" + cfg.kind + "'");
    const int S = static_cast<int>(cfg.size);
    RgbImage padded;
    const RgbImage * img = &in;
    if (cfg.pad_to_square && in.width != in.height) {
        std::array<uint8_t, 3> bg{};
        for (int c = 0; c < 3; ++c) bg[c] = static_cast<uint8_t>(static_cast<int>(cfg.mean[c] * 255.0));  // int(m*255)
        padded = expand_to_square(in, bg);
        img = &padded;
    }
    int rw = S, rh = S;
    if (cfg.kind == "clip") {  // transformers get_resize_output_image_size(default_to_square=False)
        const int w = img->width, h = img->height, shorter = std::min(w, h), longer = std::max(w, h);
        const int new_long = static_cast<int>(static_cast<double>(S) * longer / shorter);
        rw = w <= h ? S : new_long;
        rh = w <= h ? new_long : S;
    }
    // transformers center_crop: top = (h - crop) // 2, left = (w - crop) // 2.
    const int top = (rh - S) / 2, left = (rw - S) / 2;
    std::vector<uint8_t> px(static_cast<size_t>(S) * S * 3);
    resize_window(*img, rw, rh, left, top, S, S, px.data());

    // rescale: float64(v) * (1/255) cast to float32; normalize: (x - mean) / std in float32.
    std::array<std::array<float, 256>, 3> lut{};
    for (int c = 0; c < 3; ++c)
        for (int v = 0; v < 256; ++v) {
            float x = static_cast<float>(static_cast<double>(v) * (1.0 / 255.0));
            lut[c][v] = (x - cfg.mean[c]) / cfg.std[c];
        }
    torch::Tensor out_CHW = torch::empty({3, S, S}, torch::kFloat32);
    float * o = out_CHW.data_ptr<float>();
    const size_t plane = static_cast<size_t>(S) * S;
    for (size_t i = 0; i < plane; ++i) {
        o[i] = lut[0][px[i * 3]];
        o[plane + i] = lut[1][px[i * 3 + 1]];
        o[2 * plane + i] = lut[2][px[i * 3 + 2]];
    }
    return out_CHW;
}

torch::Tensor blank_image(const ImageProcessorConfig & cfg) { return torch::zeros({3, cfg.size, cfg.size}, torch::kFloat32); }

int64_t image_token_count(const std::string & vision_dir, const std::string & select_feature) {
    namespace fs = std::filesystem;
    fs::path cfg = fs::path(vision_dir) / "config.json";
    std::ifstream in(cfg);
    if (!in) throw ImageError("cannot open " + cfg.string() + " (needed for the image token count)");
    nlohmann::json j;
    try {
        j = nlohmann::json::parse(in);
    } catch (const nlohmann::json::exception & e) {
        throw ImageError(cfg.string() + ": malformed JSON: " + e.what());
    }
    const auto & v = j.contains("vision_config") ? j["vision_config"] : j;
    std::string type = v.value("model_type", j.value("model_type", ""));
    int64_t image = v.at("image_size").get<int64_t>(), patch = v.at("patch_size").get<int64_t>();
    int64_t grid = image / patch;
    bool has_cls = type.find("siglip") == std::string::npos;
    int64_t n = grid * grid + (has_cls ? 1 : 0);
    if (select_feature == "patch") n -= 1;
    return n;
}

}  // namespace idamoe::data
