// safetensors reader/writer, checkpoint directories (sharded, torch.save .bin) and strict loading.
#include "io/hf_loader.h"
#include "io/safetensors.h"
#include "test_utils.h"

#include <catch2/catch.hpp>

#include <cstring>
#include <filesystem>
#include <fstream>

using namespace idamoe;
using idamoe::test::fixture_path;
using idamoe::test::TempDir;
using idamoe::test::write_text;

namespace {

std::string error_of(const std::function<void()> & f) {
    try {
        f();
    } catch (const std::exception & e) {
        return e.what();
    }
    return "<no error>";
}

// A safetensors file with a hand-written header, for the corrupt-file cases.
void write_raw(const std::string & path, const std::string & header, size_t data_bytes, uint64_t claimed_len = 0) {
    std::ofstream out(path, std::ios::binary);
    uint64_t n = claimed_len ? claimed_len : header.size();
    out.write(reinterpret_cast<const char *>(&n), 8);
    out.write(header.data(), static_cast<std::streamsize>(header.size()));
    std::string data(data_bytes, '\0');
    out.write(data.data(), static_cast<std::streamsize>(data.size()));
}

io::TensorMap all_dtypes() {
    io::TensorMap m;
    m["f64"] = torch::tensor({1.5, -2.25}, torch::kFloat64);
    m["f32"] = torch::arange(12, torch::kFloat32).reshape({3, 4}) / 7;
    m["f16"] = torch::tensor({0.5, 1.0, -3.0}, torch::kFloat32).to(torch::kFloat16);
    m["bf16"] = torch::tensor({0.5, 1.0, -3.0, 100.0}, torch::kFloat32).to(torch::kBFloat16);
    m["i64"] = torch::tensor({int64_t(1) << 40, int64_t(-5)}, torch::kInt64);
    m["i32"] = torch::tensor({7, -8}, torch::kInt32);
    m["i16"] = torch::tensor({3}, torch::kInt16);
    m["i8"] = torch::tensor({-1, 2, 3}, torch::kInt8);
    m["u8"] = torch::tensor({255, 0}, torch::kUInt8);
    m["bool"] = torch::tensor({true, false, true}, torch::kBool);
    m["scalar"] = torch::tensor(3.25, torch::kFloat32);  // shape []
    m["empty"] = torch::zeros({0, 4}, torch::kFloat32);  // begin == end
    m["nc"] = torch::arange(6, torch::kFloat32).reshape({2, 3}).t();  // non-contiguous input
    return m;
}

}  // namespace

TEST_CASE("safetensors: round trip of every dtype, scalars, empty and non-contiguous tensors", "[safetensors]") {
    TempDir d;
    const auto src = all_dtypes();
    io::save_safetensors(d.str("a.safetensors"), src, {{"format", "pt"}, {"note", "x"}});

    // Header length is a multiple of 8 so the data buffer is 8-byte aligned.
    std::ifstream in(d.str("a.safetensors"), std::ios::binary);
    uint64_t n = 0;
    in.read(reinterpret_cast<char *>(&n), 8);
    CHECK(n % 8 == 0);

    io::SafetensorsFile f(d.str("a.safetensors"));
    CHECK(f.metadata().at("format") == "pt");
    CHECK(f.metadata().at("note") == "x");
    CHECK(f.tensors().size() == src.size());
    for (const auto & [name, t] : src) {
        INFO(name);
        REQUIRE(f.contains(name));
        for (bool zero_copy : {false, true}) {
            torch::Tensor got = f.get(name, zero_copy);
            CHECK(got.scalar_type() == t.scalar_type());
            CHECK(got.sizes() == t.sizes());
            CHECK(torch::equal(got, t.contiguous()));
        }
    }
    // A zero-copy tensor keeps the mapping alive after the file object is gone, and writing to it
    // touches neither the file nor other readers (private mapping).
    torch::Tensor alias;
    {
        io::SafetensorsFile g(d.str("a.safetensors"));
        alias = g.get("f32", true);
    }
    alias.fill_(9.0);
    CHECK(torch::equal(io::load_safetensors(d.str("a.safetensors")).at("f32"), src.at("f32")));
    CHECK_FALSE(f.contains("nope"));
    CHECK_THAT(error_of([&] { f.get("nope"); }), Catch::Contains("a.safetensors") && Catch::Contains("'nope'"));
}

TEST_CASE("safetensors: reads the HF fixture written by the Python safetensors API", "[safetensors]") {
    io::SafetensorsFile f(fixture_path("hf/qwen2/model.safetensors"));
    CHECK(f.metadata().at("format") == "pt");
    CHECK(f.get("model.embed_tokens.weight").sizes() == std::vector<int64_t>{512, 64});
    CHECK(f.get("model.layers.1.self_attn.k_proj.bias").sizes() == std::vector<int64_t>{32});
    CHECK_FALSE(f.contains("lm_head.weight"));  // tied
    auto in = io::load_safetensors(fixture_path("hf/qwen2/inputs.safetensors"));
    CHECK(in.at("input_ids").scalar_type() == torch::kInt64);
    CHECK(in.at("labels")[0][0].item<int64_t>() == -100);
}

TEST_CASE("safetensors: corrupt files give one error naming the file and the tensor", "[safetensors]") {
    TempDir d;
    const std::string p = d.str("bad.safetensors");
    auto err = [&] { return error_of([&] { io::SafetensorsFile f(p); }); };

    SECTION("truncated data") {
        io::save_safetensors(p, all_dtypes());
        const auto size = std::filesystem::file_size(p);
        std::filesystem::resize_file(p, size - 5);
        CHECK_THAT(err(), Catch::Contains("bad.safetensors") && Catch::Contains("run past the data buffer") &&
                              Catch::Contains("tensor '"));
        std::filesystem::resize_file(p, 20);  // cut inside the header
        CHECK_THAT(err(), Catch::Contains("bad.safetensors") && Catch::Contains("runs past the end of the file"));
        std::filesystem::resize_file(p, 3);
        CHECK_THAT(err(), Catch::Contains("shorter than the 8-byte header length"));
    }
    SECTION("bad header JSON") {
        write_raw(p, R"({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]})", 4);  // missing brace
        CHECK_THAT(err(), Catch::Contains("bad.safetensors") && Catch::Contains("not valid JSON"));
        write_raw(p, R"([1, 2])", 0);
        CHECK_THAT(err(), Catch::Contains("not an object"));
    }
    SECTION("absurd header length") {
        write_raw(p, "{}", 0, uint64_t(1) << 62);
        CHECK_THAT(err(), Catch::Contains("100 MB"));
    }
    SECTION("offsets past the end of the data buffer") {
        write_raw(p, R"({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, "v": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}})", 8);
        CHECK_THAT(err(), Catch::Contains("tensor 'v'") && Catch::Contains("[8, 16]") && Catch::Contains("8 bytes"));
    }
    SECTION("size does not match shape x itemsize") {
        write_raw(p, R"({"w": {"dtype": "BF16", "shape": [2, 3], "data_offsets": [0, 8]}})", 8);
        CHECK_THAT(err(), Catch::Contains("tensor 'w'") && Catch::Contains("[2, 3] x BF16 needs 12 bytes") &&
                              Catch::Contains("span 8"));
    }
    SECTION("overlapping tensors") {
        write_raw(p, R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}})", 12);
        CHECK_THAT(err(), Catch::Contains("'a' and 'b' overlap"));
    }
    SECTION("duplicate keys") {
        write_raw(p, R"({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, "a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}})", 8);
        CHECK_THAT(err(), Catch::Contains("duplicate tensor name 'a'"));
    }
    SECTION("unsupported dtype and malformed entries") {
        write_raw(p, R"({"a": {"dtype": "U16", "shape": [1], "data_offsets": [0, 2]}})", 2);
        CHECK_THAT(err(), Catch::Contains("tensor 'a'") && Catch::Contains("unsupported dtype 'U16'"));
        write_raw(p, R"({"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}})", 4);
        CHECK_THAT(err(), Catch::Contains("non-negative"));
        write_raw(p, R"({"a": {"dtype": "F32", "shape": [1]}})", 4);
        CHECK_THAT(err(), Catch::Contains("data_offsets"));
        write_raw(p, R"({"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 0]}})", 4);
        CHECK_THAT(err(), Catch::Contains("< begin"));
        write_raw(p, R"({"__metadata__": {"format": 3}})", 0);
        CHECK_THAT(err(), Catch::Contains("__metadata__"));
    }
    SECTION("missing file") {
        CHECK_THAT(error_of([&] { io::load_safetensors(d.str("none.safetensors")); }),
                   Catch::Contains("none.safetensors") && Catch::Contains("cannot open"));
    }
}

TEST_CASE("checkpoint dirs: single file, shards through the index, and errors", "[safetensors]") {
    TempDir d;
    auto src = all_dtypes();
    io::TensorMap a, b;
    for (const auto & [k, v] : src) (k < "g" ? a : b)[k] = v;
    std::filesystem::create_directories(d.str("sh"));
    io::save_safetensors(d.str("sh/model-00001-of-00002.safetensors"), a);
    io::save_safetensors(d.str("sh/model-00002-of-00002.safetensors"), b);
    std::string wm;
    for (const auto & [k, v] : src)
        wm += (wm.empty() ? "" : ", ") + ("\"" + k + "\": \"model-0000" + (k < "g" ? "1" : "2") + "-of-00002.safetensors\"");
    write_text(d.str("sh/model.safetensors.index.json"), "{\"metadata\": {\"total_size\": 1}, \"weight_map\": {" + wm + "}}");
    auto got = io::load_checkpoint_dir(d.str("sh"));
    REQUIRE(got.size() == src.size());
    for (const auto & [k, v] : src) CHECK(torch::equal(got.at(k), v.contiguous()));

    // A tensor mapped to a shard that lacks it.
    write_text(d.str("sh/model.safetensors.index.json"),
               "{\"weight_map\": {" + wm + ", \"ghost\": \"model-00001-of-00002.safetensors\"}}");
    CHECK_THAT(error_of([&] { io::load_checkpoint_dir(d.str("sh")); }),
               Catch::Contains("'ghost'") && Catch::Contains("model-00001-of-00002.safetensors"));

    std::filesystem::create_directories(d.str("empty"));
    CHECK_THAT(error_of([&] { io::load_checkpoint_dir(d.str("empty")); }),
               Catch::Contains("empty") && Catch::Contains("model.safetensors"));

    // Single-file directory.
    std::filesystem::create_directories(d.str("one"));
    std::filesystem::copy_file(fixture_path("hf/stablelm/model.safetensors"), d.str("one/model.safetensors"));
    auto one = io::load_checkpoint_dir(d.str("one"));
    CHECK(one.at("lm_head.weight").sizes() == std::vector<int64_t>{512, 64});
    CHECK(one.size() == 1 + 2 * 14 + 3);  // embed, 14 tensors per layer, final norm (w, b), lm_head
}

TEST_CASE("checkpoint dirs: pytorch_model.bin written by torch.save (Python 1.13)", "[safetensors]") {
    // tests/fixtures/torch_bin/make_bin_fixture.py wrote these; values are closed-form.
    auto sd = io::load_checkpoint_dir(fixture_path("torch_bin/state_dict.bin"));
    REQUIRE(sd.size() == 7);
    auto embed = torch::arange(12, torch::kFloat32).reshape({4, 3}) / 8;
    CHECK(torch::equal(sd.at("model.embed_tokens.weight"), embed));
    CHECK(torch::equal(sd.at("lm_head.weight"), embed));
    CHECK(sd.at("layer.bias").scalar_type() == torch::kBFloat16);
    CHECK(torch::equal(sd.at("layer.bias").to(torch::kFloat32), torch::tensor({0.5f, -1.25f, 3.0f})));
    CHECK(sd.at("half").scalar_type() == torch::kFloat16);
    CHECK(torch::equal(sd.at("half").to(torch::kFloat32), torch::tensor({0.0f, 0.25f, 0.5f, 0.75f})));
    CHECK(torch::equal(sd.at("view"), torch::tensor({{7.0f, 8.0f}, {12.0f, 13.0f}})));  // offset 7, strides (5, 1)
    CHECK(sd.at("steps").item<int64_t>() == 7);
    CHECK(torch::equal(sd.at("flag"), torch::tensor({true, false})));

    auto plain = io::load_checkpoint_dir(fixture_path("torch_bin/plain_dict.bin"));
    CHECK(torch::equal(plain.at("w"), torch::arange(20, torch::kFloat32).reshape({4, 5})));
    CHECK(torch::equal(plain.at("b"), torch::ones({2})));

    // As pytorch_model.bin inside a model directory, and a corrupt one.
    TempDir d;
    std::filesystem::create_directories(d.str("m"));
    std::filesystem::copy_file(fixture_path("torch_bin/plain_dict.bin"), d.str("m/pytorch_model.bin"));
    CHECK(io::load_checkpoint_dir(d.str("m")).size() == 2);
    std::filesystem::resize_file(d.str("m/pytorch_model.bin"), 300);
    CHECK_THAT(error_of([&] { io::load_checkpoint_dir(d.str("m")); }),
               Catch::Contains("pytorch_model.bin") && Catch::Contains("cannot unpickle"));
}

namespace {

struct Tiny : torch::nn::Module {
    torch::nn::Linear proj{nullptr};
    torch::nn::LayerNorm norm{nullptr};
    Tiny() {
        proj = register_module("proj", torch::nn::Linear(3, 2));
        norm = register_module("norm", torch::nn::LayerNorm(torch::nn::LayerNormOptions({2})));
        register_buffer("steps", torch::zeros({1}, torch::kInt64));
    }
};

io::TensorMap tiny_state() {
    return {{"proj.weight", torch::arange(6, torch::kFloat32).reshape({2, 3})},
            {"proj.bias", torch::tensor({0.5f, -0.5f})},
            {"norm.weight", torch::tensor({2.0f, 3.0f})},
            {"norm.bias", torch::tensor({0.25f, 0.75f})},
            {"steps", torch::tensor({int64_t(4)})}};
}

}  // namespace

TEST_CASE("load_state_strict: fills every parameter, converts dtypes, reports all problems", "[safetensors]") {
    SECTION("exact match, bf16 checkpoint into an fp32 model") {
        Tiny m;
        auto st = tiny_state();
        st["proj.weight"] = st["proj.weight"].to(torch::kBFloat16);
        auto r = io::load_state_strict(m, st, "ckpt.safetensors");
        CHECK(r.loaded.size() == 5);
        CHECK(m.proj->weight.scalar_type() == torch::kFloat32);
        CHECK(torch::equal(m.proj->weight, torch::arange(6, torch::kFloat32).reshape({2, 3})));
        CHECK(m.named_buffers()["steps"].item<int64_t>() == 4);
        CHECK(m.proj->weight.requires_grad());
    }
    SECTION("missing, unexpected and mismatched keys all listed, nothing copied") {
        Tiny m;
        auto before = m.proj->bias.clone();
        auto st = tiny_state();
        st.erase("norm.bias");
        st["extra.weight"] = torch::zeros({1});
        st["proj.weight"] = torch::zeros({3, 2});
        const std::string e = error_of([&] { io::load_state_strict(m, st, "/x/model.safetensors"); });
        CHECK_THAT(e, Catch::Contains("/x/model.safetensors") && Catch::Contains("1 missing key") &&
                          Catch::Contains("norm.bias") && Catch::Contains("1 unexpected key") &&
                          Catch::Contains("extra.weight") &&
                          Catch::Contains("proj.weight: checkpoint [3, 2] vs model [2, 3]"));
        CHECK_THAT(e, !Catch::Contains("missing key(s) (in the model, not in the checkpoint):\n    proj.weight"));
        CHECK(torch::equal(m.proj->bias, before));
    }
    SECTION("ignore, strip/add prefixes and allow-missing") {
        Tiny m;
        io::TensorMap st;
        for (const auto & [k, v] : tiny_state()) st["tower." + k] = v;
        st["head.probe"] = torch::zeros({5});
        st["tower.head.x"] = torch::zeros({5});
        st.erase("tower.steps");
        io::LoadOptions o;
        o.ignore_prefixes = {"tower.head."};
        o.strip_prefix = "tower.";
        o.only_stripped = true;
        o.allow_missing = {"steps"};
        auto r = io::load_state_strict(m, st, "vlm.bin", o);
        CHECK(r.loaded.size() == 4);
        CHECK(r.ignored.size() == 2);
        CHECK(r.allowed_missing == std::vector<std::string>{"steps"});
        CHECK(torch::equal(m.norm->weight, torch::tensor({2.0f, 3.0f})));

        Tiny m2;
        io::LoadOptions o2;
        o2.add_prefix = "proj.";
        o2.allow_missing = {"norm.weight", "norm.bias", "steps"};
        auto r2 = io::load_state_strict(m2, {{"weight", torch::ones({2, 3})}, {"bias", torch::ones({2})}}, "p.bin", o2);
        CHECK(r2.loaded.size() == 2);
        CHECK(torch::equal(m2.proj->weight, torch::ones({2, 3})));
    }
}

TEST_CASE("safetensors and .bin readers: random corruption throws, never crashes", "[safetensors]") {
    TempDir d;
    std::mt19937 rng(1234);
    auto mutate_and_read = [&](const std::string & src, const std::string & dst, size_t region, bool bin) {
        std::ifstream in(src, std::ios::binary);
        std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
        int ok = 0, rejected = 0;
        for (int trial = 0; trial < 300; ++trial) {
            std::string b = bytes;
            const int kind = trial % 3;
            if (kind == 0) {  // flip a few bytes in the header / pickle region
                for (int k = 0; k < 3; ++k) b[rng() % std::min(region, b.size())] = static_cast<char>(rng());
            } else if (kind == 1) {  // truncate
                b.resize(rng() % b.size());
            } else {  // overwrite the length field / zip end records
                const size_t at = bin ? b.size() - 1 - rng() % 64 : rng() % 8;
                b[at] = static_cast<char>(rng());
            }
            std::ofstream(dst, std::ios::binary | std::ios::trunc).write(b.data(), static_cast<std::streamsize>(b.size()));
            try {
                auto m = bin ? io::load_checkpoint_dir(dst) : io::load_safetensors(dst);
                for (auto & [k, v] : m) (void)v.sum();  // touch every tensor
                ++ok;
            } catch (const std::exception & e) {
                CHECK_THAT(std::string(e.what()), Catch::Contains(dst));
                ++rejected;
            }
        }
        std::printf("  corruption of %s: %d rejected with an error naming the file, %d still readable\n",
                    std::filesystem::path(src).filename().c_str(), rejected, ok);
        CHECK(rejected > 100);
    };
    io::save_safetensors(d.str("good.safetensors"), all_dtypes());
    std::ifstream in(d.str("good.safetensors"), std::ios::binary);
    uint64_t n = 0;
    in.read(reinterpret_cast<char *>(&n), 8);
    mutate_and_read(d.str("good.safetensors"), d.str("bad.safetensors"), 8 + n, false);
    mutate_and_read(fixture_path("torch_bin/state_dict.bin"), d.str("bad.bin"), 1024, true);
}
