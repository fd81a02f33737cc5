// Image preprocessing parity with Pillow + the HF CLIP/SigLIP recipe (reference arrays written by
// tests/fixtures/images/make_reference.py), and corrupt-file handling.
#include "data/images.h"
#include "test_utils.h"

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>

using namespace idamoe::data;
using idamoe::test::fixture_path;

namespace {

// Minimal .npy reader (format 1.0, little-endian, C order): dtype u1 or <f4.
torch::Tensor read_npy(const std::string & path) {
    std::ifstream in(path, std::ios::binary);
    REQUIRE(in);
    char magic[8];
    in.read(magic, 8);
    REQUIRE(std::string(magic + 1, 5) == "NUMPY");
    uint16_t hlen = 0;
    in.read(reinterpret_cast<char *>(&hlen), 2);
    std::string header(hlen, ' ');
    in.read(header.data(), hlen);
    REQUIRE(header.find("'fortran_order': False") != std::string::npos);
    auto lp = header.find("'shape': (") + 10;
    std::vector<int64_t> shape;
    std::string dims = header.substr(lp, header.find(')', lp) - lp);
    for (size_t p = 0; p < dims.size();) {
        size_t q = dims.find(',', p);
        std::string d = dims.substr(p, q == std::string::npos ? std::string::npos : q - p);
        if (d.find_first_not_of(' ') != std::string::npos) shape.push_back(std::stoll(d));
        if (q == std::string::npos) break;
        p = q + 1;
    }
    bool u8 = header.find("'|u1'") != std::string::npos;
    REQUIRE((u8 || header.find("'<f4'") != std::string::npos));
    auto t = torch::empty(shape, u8 ? torch::kUInt8 : torch::kFloat32);
    in.read(reinterpret_cast<char *>(t.data_ptr()), t.numel() * t.element_size());
    REQUIRE(in);
    return t;
}

ImageProcessorConfig config_of(const nlohmann::json & c) {
    ImageProcessorConfig p = c["processor"] == "clip" ? ImageProcessorConfig::clip336(c["pad"]) : ImageProcessorConfig::siglip384(c["pad"]);
    p.size = c["size"];
    return p;
}

// Undo normalisation to the uint8 grid: the values PIL produced before rescale.
torch::Tensor to_pixels_HWC(const torch::Tensor & x_CHW, const ImageProcessorConfig & p) {
    auto mean = torch::tensor(std::vector<float>(p.mean.begin(), p.mean.end())).view({3, 1, 1});
    auto std = torch::tensor(std::vector<float>(p.std.begin(), p.std.end())).view({3, 1, 1});
    return (x_CHW * std + mean).mul(255.0).round().clamp(0, 255).to(torch::kUInt8).permute({1, 2, 0}).contiguous();
}

}  // namespace

TEST_CASE("images: decode + CLIP/SigLIP preprocessing match Pillow + HF recipe", "[data][images]") {
    std::ifstream mf(fixture_path("images/reference.json"));
    auto manifest = nlohmann::json::parse(mf);
    REQUIRE(manifest.size() == 9);
    for (const auto & c : manifest) {
        std::string name = c["name"];
        SECTION(name) {
            auto p = config_of(c);
            auto img = decode_image_file(fixture_path("images/" + c["file"].get<std::string>()));
            auto x_CHW = preprocess_image(img, p);
            REQUIRE(x_CHW.sizes() == torch::IntArrayRef({3, p.size, p.size}));
            auto ref = read_npy(fixture_path("images/ref_" + name + ".npy"));
            if (c["stored"] == "float32_chw") {
                double err = (x_CHW - ref).abs().max().item<double>();
                INFO(name << ": max |ours - PIL| after normalisation = " << err);
                CHECK(err <= 1e-6);  // bit-identical pixels, same float32 arithmetic
            } else {
                auto diff = (to_pixels_HWC(x_CHW, p).to(torch::kInt32) - ref.to(torch::kInt32)).abs();
                int max_diff = diff.max().item<int>();
                double mean_diff = diff.to(torch::kFloat64).mean().item<double>();
                INFO(name << ": max |ours - PIL| = " << max_diff << " levels, mean " << mean_diff);
                CHECK(max_diff == 0);
            }
        }
    }
}

TEST_CASE("images: JPEG decodes bit-identically to Pillow (baseline, progressive, 4:4:4, gray, CMYK)", "[data][images]") {
    // Both go through libjpeg-turbo with its default IDCT and fancy upsampling; CMYK through Pillow's
    // inverted-CMYK raw mode and its cmyk2rgb rounding.
    for (const char * f : {"photo.jpg", "progressive.jpg", "yuv444.jpg", "gray.jpg", "cmyk.jpg"}) {
        INFO(f);
        auto img = decode_image_file(fixture_path(std::string("images/") + f));
        std::string stem(f);
        stem.replace(stem.find('.'), 1, "_");
        auto ref_HWC = read_npy(fixture_path("images/dec_" + stem + ".npy"));
        REQUIRE(ref_HWC.sizes() == torch::IntArrayRef({img.height, img.width, 3}));
        auto ours_HWC = torch::from_blob(img.pixels.data(), {img.height, img.width, 3}, torch::kUInt8);
        CHECK((ours_HWC.to(torch::kInt32) - ref_HWC.to(torch::kInt32)).abs().max().item<int>() == 0);
    }
}

TEST_CASE("images: resize_bicubic equals PIL on the non-cropped path and handles identity", "[data][images]") {
    auto img = decode_image_file(fixture_path("images/small.png"));
    auto same = resize_bicubic(img, img.width, img.height);
    CHECK(same.pixels == img.pixels);
    auto sq = expand_to_square(img, {1, 2, 3});
    CHECK(sq.width == 97);
    CHECK(sq.height == 97);
    // Row 0 lies in the top padding band ((97-61)//2 = 18 rows): background colour.
    CHECK(sq.pixels[0] == 1);
    CHECK(sq.pixels[1] == 2);
    CHECK(sq.pixels[2] == 3);
    CHECK(std::equal(img.pixels.begin(), img.pixels.begin() + 97 * 3, sq.pixels.begin() + 18 * 97 * 3));
}

TEST_CASE("images: gray, RGBA, palette GIF and BMP all become 3-channel RGB", "[data][images]") {
    for (const char * f : {"gray.png", "rgba.png", "pal.gif", "img.bmp"}) {
        auto img = decode_image_file(fixture_path(std::string("images/") + f));
        CHECK(img.pixels.size() == static_cast<size_t>(img.width) * img.height * 3);
    }
    auto g = decode_image_file(fixture_path("images/gray.png"));
    CHECK(g.pixels[3 * 7 + 0] == g.pixels[3 * 7 + 1]);
    CHECK(g.pixels[3 * 7 + 1] == g.pixels[3 * 7 + 2]);
}

TEST_CASE("images: corrupt, truncated, empty, huge and non-image files throw ImageError naming the file", "[data][images]") {
    for (const char * f : {"truncated.jpg", "truncated.png", "zero.png", "not_an_image.jpg", "huge.png", "missing.png"}) {
        std::string path = fixture_path(std::string("images/") + f);
        INFO(f);
        CHECK_THROWS_AS(decode_image_file(path), ImageError);
        try {
            decode_image_file(path);
        } catch (const ImageError & e) {
            CHECK(std::string(e.what()).find(f) != std::string::npos);
            UNSCOPED_INFO(e.what());
        }
    }
    ImageLimits tight;
    tight.max_side = 100;
    CHECK_THROWS_WITH(decode_image_file(fixture_path("images/big.png"), tight), Catch::Contains("exceed"));
    CHECK_THROWS_WITH(decode_image_file(fixture_path("images/photo.jpg"), tight),
                      Catch::Contains("photo.jpg") && Catch::Contains("320x240") && Catch::Contains("exceed"));
    // 601 scans: refused at the 501st instead of decoding every repeated scan (Pillow decodes them all).
    CHECK_THROWS_WITH(decode_image_file(fixture_path("images/many_scans.jpg")),
                      Catch::Contains("many_scans.jpg") && Catch::Contains("more than 500 progressive scans"));
}

TEST_CASE("images: blank image and token counts", "[data][images]") {
    auto p = ImageProcessorConfig::siglip384(true);
    CHECK(blank_image(p).sizes() == torch::IntArrayRef({3, 384, 384}));
    CHECK(blank_image(p).abs().sum().item<float>() == 0.0f);
    // Fixture towers: CLIP 42/14 = 3x3 patches + CLS; SigLIP 56/14 = 4x4, no CLS.
    CHECK(image_token_count(fixture_path("hf/clip_vision"), "patch") == 9);
    CHECK(image_token_count(fixture_path("hf/clip_vision"), "cls_patch") == 10);
    CHECK(image_token_count(fixture_path("hf/siglip_vision"), "patch") == 15);
    CHECK(image_token_count(fixture_path("hf/siglip_vision"), "cls_patch") == 16);
}

// Benchmark driven by scripts/bench_data.sh (hidden: runs only when asked for by tag and given a folder).
TEST_CASE("images: decode + CLIP-336 preprocessing throughput", "[.][bench_images]") {
    const char * dir = std::getenv("IDAMOE_BENCH_IMAGES");
    if (!dir) {
        WARN("set IDAMOE_BENCH_IMAGES to a folder of JPEGs");
        return;
    }
    std::vector<std::string> files;
    for (const auto & e : std::filesystem::directory_iterator(dir))
        if (e.path().extension() == ".jpg") files.push_back(e.path().string());
    std::sort(files.begin(), files.end());
    REQUIRE(!files.empty());
    auto cfg = ImageProcessorConfig::clip336(false);
    for (size_t i = 0; i < std::min<size_t>(5, files.size()); ++i) preprocess_image(decode_image_file(files[i]), cfg);
    double checksum = 0;
    auto t0 = std::chrono::steady_clock::now();
    for (const auto & f : files) checksum += preprocess_image(decode_image_file(f), cfg)[0][0][0].item<float>();
    double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::printf("idamoe: %zu images in %.3f s = %.1f images/s/core (checksum %.4f)\n", files.size(), s, files.size() / s,
                checksum);
    CHECK(std::isfinite(checksum));
}
