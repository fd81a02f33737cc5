// Inputs that libFuzzer found crashing (tests/fuzz/), kept as regression tests: each must now give
// one clean error. Under scripts/sanitize.sh the same tests also fail on any sanitizer report.
#include "data/images.h"
#include "model/vision_tower.h"
#include "test_utils.h"

#include <catch2/catch.hpp>

#include <fstream>
#include <sstream>

using idamoe::test::read_file;

TEST_CASE("fuzz regression: JPEG whose Huffman table declares more than 256 codes", "[fuzz][data]") {
    // stb_image 2.27 wrote past stbi__huffman::size[257] on these files (fuzz_image); the later two
    // reached their DHT through stb's marker resynchronisation (fill bytes before SOI). JPEG now goes
    // to libjpeg-turbo and stb is built without its JPEG decoder; the files stay as regressions.
    for (const char * f : {"image_jpeg_dht_overflow.bin", "image_jpeg_dht_overflow2.bin", "image_jpeg_dht_overflow3.bin"}) {
        const std::string bytes = read_file(idamoe::test::fixture_path(std::string("fuzz_regressions/") + f));
        REQUIRE(bytes.size() > 2);
        CHECK_THROWS_WITH(idamoe::data::decode_image_memory(reinterpret_cast<const uint8_t *>(bytes.data()),
                                                            bytes.size(), "crash.jpg"),
                          Catch::Contains("crash.jpg"));
    }
}

TEST_CASE("fuzz regression: config.json integer field holding a huge float", "[fuzz][model]") {
    // nlohmann's float -> int64 conversion of 5.7e128 was undefined behaviour (fuzz_model_config).
    const std::string text = read_file(idamoe::test::fixture_path("fuzz_regressions/model_config_huge_float.json"));
    CHECK_THROWS_WITH(idamoe::model::vision_config_from_json_text(text, "fuzz/config.json"),
                      Catch::Contains("fuzz/config.json"));
    CHECK_THROWS_WITH(idamoe::model::vision_config_from_json_text(
                          R"({"model_type": "clip_vision_model", "hidden_size": 1e300})", "x/config.json"),
                      Catch::Contains("x/config.json") && Catch::Contains("hidden_size"));
}
