// Tokenizer parity: Qwen2 byte-level BPE against ids produced by Hugging Face tokenizers (fixture
// tests/fixtures/tokenizer, README §2), SentencePiece against the spm_encode CLI.
#include "data/tokenizer.h"
#include "test_utils.h"

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <thread>

using namespace idamoe::data;
using idamoe::test::fixture_path;
using idamoe::test::TempDir;
using idamoe::test::write_text;

namespace {

std::vector<nlohmann::json> read_jsonl(const std::string & path) {
    std::ifstream in(path);
    REQUIRE(in);
    std::vector<nlohmann::json> out;
    std::string line;
    while (std::getline(in, line)) out.push_back(nlohmann::json::parse(line));
    return out;
}

std::shared_ptr<Tokenizer> qwen2() {
    static std::shared_ptr<Tokenizer> tok = load_tokenizer(fixture_path("tokenizer/qwen2"));
    return tok;
}

// A minimal byte-level tokenizer.json: the 256 byte symbols plus merges for "ab", "abc", "Ġa".
std::string tiny_bpe_json(bool pair_merges) {
    nlohmann::json vocab = nlohmann::json::object();
    auto cp = [](int c) {
        std::string s;
        if (c < 0x80) s += char(c);
        else { s += char(0xC0 | (c >> 6)); s += char(0x80 | (c & 0x3F)); }
        return s;
    };
    int n = 0;
    for (int b = 0; b < 256; ++b) {
        bool keep = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
        vocab[cp(keep ? b : 256 + n++)] = b;
    }
    vocab["ab"] = 256;
    vocab["abc"] = 257;
    vocab["Ġa"] = 258;
    nlohmann::json merges = pair_merges ? nlohmann::json::parse(R"([["a","b"],["ab","c"],["Ġ","a"]])")
                                        : nlohmann::json::parse(R"(["a b","ab c","Ġ a"])");
    nlohmann::json j = {
        {"added_tokens", {{{"id", 259}, {"content", "<|end|>"}, {"special", true}}}},
        {"normalizer", nullptr},
        {"pre_tokenizer", {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", true}}},
        {"decoder", {{"type", "ByteLevel"}}},
        {"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", merges}}}};
    return j.dump();
}

}  // namespace

TEST_CASE("tokenizer: Qwen2 BPE gives Hugging Face's ids on every corpus line", "[data][tokenizer]") {
    auto tok = qwen2();
    auto corpus = read_jsonl(fixture_path("tokenizer/corpus.jsonl"));
    auto expected = read_jsonl(fixture_path("tokenizer/expected_ids.jsonl"));
    auto decoded = read_jsonl(fixture_path("tokenizer/decode_check.jsonl"));
    REQUIRE(corpus.size() == 62);
    REQUIRE(expected.size() == corpus.size());
    int mismatches = 0;
    for (size_t i = 0; i < corpus.size(); ++i) {
        std::string text = corpus[i].get<std::string>();
        auto ids = tok->encode(text);
        auto want = expected[i].get<std::vector<int64_t>>();
        if (ids != want) {
            ++mismatches;
            UNSCOPED_INFO("line " << i + 1 << " differs: " << nlohmann::json(ids).dump() << " vs " << nlohmann::json(want).dump());
        }
        // decode(encode(x)) == NFC(x), and equals what HF decodes.
        std::string back = tok->decode(ids);
        CHECK(back == nfc(text));
        CHECK(back == decoded[i]["decoded"].get<std::string>());
    }
    CHECK(mismatches == 0);
}

TEST_CASE("tokenizer: Qwen2 special tokens are matched whole, near-misses are text", "[data][tokenizer]") {
    auto tok = qwen2();
    CHECK(tok->vocab_size() == 151646);
    CHECK(tok->eos_id() == 151643);
    CHECK(tok->special_id("<|im_start|>") == std::optional<int64_t>(151644));
    CHECK(tok->id_of("<|im_end|>") == std::optional<int64_t>(151645));
    CHECK(tok->id_of("Ġthe").has_value());
    CHECK_FALSE(tok->id_of("definitely-not-a-token-xyz").has_value());
    auto ids = tok->encode("a<|im_end|>b");
    REQUIRE(ids.size() == 3);
    CHECK(ids[1] == 151645);
    for (int64_t id : tok->encode("<|im_start>")) CHECK(id < 151643);
    CHECK(tok->encode("").empty());
}

TEST_CASE("tokenizer: invalid UTF-8 becomes U+FFFD on decode and does not break encode", "[data][tokenizer]") {
    auto tok = qwen2();
    CHECK(utf8_sanitize("a\xFF" "b") == "a\xEF\xBF\xBD" "b");
    CHECK(utf8_sanitize("\xE2\x82") == "\xEF\xBF\xBD");  // truncated 3-byte sequence: one replacement
    CHECK(utf8_sanitize("\xED\xA0\x80") == "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD");  // surrogate: 3 (as Python)
    CHECK_FALSE(utf8_valid("\xC0\xAF"));
    // The byte 0xFF alone is one byte-level token; decoding it alone is invalid UTF-8.
    auto ff = tok->id_of("ÿ");
    REQUIRE(ff);
    CHECK(tok->decode({*ff}) == "\xEF\xBF\xBD");
    auto ids = tok->encode("x\xFFy");
    CHECK(tok->decode(ids) == "x\xEF\xBF\xBDy");
    CHECK_THROWS_AS(tok->decode({-200}), TokenizerError);
    CHECK_THROWS_AS(tok->decode({999999}), TokenizerError);
}

TEST_CASE("tokenizer: merges as 'a b' strings and as [a,b] pairs give the same ids", "[data][tokenizer]") {
    TempDir d;
    write_text(d.str("s/tokenizer.json"), tiny_bpe_json(false));
    write_text(d.str("p/tokenizer.json"), tiny_bpe_json(true));
    auto s = load_tokenizer(d.str("s"));
    auto p = load_tokenizer(d.str("p/tokenizer.json"));
    // GPT-2 regex pieces: "abc" | " abcab" | <|end|> (special) | " a". In "Ġabcab" the two (a,b)
    // merges go first (leftmost first), then (ab,c); "Ġ" is then left alone: Ġ abc ab.
    std::vector<int64_t> want = {257, ' ', 257, 256, 259, 258};
    auto ids = s->encode("abc abcab<|end|> a");
    CHECK(ids == want);
    CHECK(p->encode("abc abcab<|end|> a") == ids);
    CHECK(s->decode(ids) == "abc abcab<|end|> a");
    CHECK(s->eos_id() == -1);
}

TEST_CASE("tokenizer: concurrent encodes agree with serial ones (shared BPE cache)", "[data][tokenizer]") {
    auto tok = qwen2();
    auto corpus = read_jsonl(fixture_path("tokenizer/corpus.jsonl"));
    std::vector<std::vector<int64_t>> serial;
    for (auto & c : corpus) serial.push_back(tok->encode(c.get<std::string>()));
    std::vector<int> bad(4, 0);
    std::vector<std::thread> threads;
    for (int t = 0; t < 4; ++t)
        threads.emplace_back([&, t] {
            for (int rep = 0; rep < 20; ++rep)
                for (size_t i = 0; i < corpus.size(); ++i)
                    if (tok->encode(corpus[(i + t) % corpus.size()].get<std::string>()) != serial[(i + t) % corpus.size()]) ++bad[t];
        });
    for (auto & th : threads) th.join();
    for (int b : bad) CHECK(b == 0);
}

TEST_CASE("tokenizer: throughput on repeated corpus text (reported, not asserted)", "[data][tokenizer]") {
    auto tok = qwen2();
    auto corpus = read_jsonl(fixture_path("tokenizer/corpus.jsonl"));
    std::string text;
    while (text.size() < 2'000'000)
        for (auto & c : corpus) text += c.get<std::string>() + "\n";
    auto t0 = std::chrono::steady_clock::now();
    auto ids = tok->encode(text);
    double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    WARN("Qwen2 BPE encode: " << text.size() / 1e6 / s << " MB/s, " << ids.size() / s << " tokens/s (1 thread, "
                              << ids.size() << " tokens)");
    CHECK(tok->decode(ids) == nfc(text));
}

TEST_CASE("tokenizer: SentencePiece .model gives spm_encode's ids, control symbols match in text", "[data][tokenizer]") {
    auto tok = load_tokenizer(fixture_path("sentencepiece/tiny.model"));
    std::ifstream corpus(fixture_path("sentencepiece/corpus.txt")), expected(fixture_path("sentencepiece/expected_ids.txt"));
    std::string line, ids_line;
    int n = 0;
    while (std::getline(corpus, line) && std::getline(expected, ids_line)) {
        std::vector<int64_t> want;
        std::istringstream ss(ids_line);
        for (int64_t v; ss >> v;) want.push_back(v);
        CHECK(tok->encode(line) == want);
        ++n;
    }
    CHECK(n == 6);
    CHECK(tok->eos_id() == 2);
    CHECK(tok->pad_id() == 2);  // no pad piece: falls back to eos
    auto ids = tok->encode("the dog</s>");
    REQUIRE(!ids.empty());
    CHECK(ids.back() == 2);
    CHECK(tok->decode(ids) == "the dog</s>");
    CHECK(tok->decode(tok->encode("The quick brown fox.")) == "The quick brown fox.");
}

TEST_CASE("tokenizer: a model directory with tokenizer.model and tokenizer_config.json", "[data][tokenizer]") {
    TempDir d;
    std::filesystem::copy_file(fixture_path("sentencepiece/tiny.model"), d.str("tokenizer.model"));
    write_text(d.str("tokenizer_config.json"), R"({"eos_token": {"content": "</s>"}, "pad_token": "<unk>"})");
    auto tok = load_tokenizer(d.str());
    CHECK(tok->describe().find("SentencePiece") != std::string::npos);
    CHECK(tok->eos_id() == 2);
    CHECK(tok->pad_id() == 0);
    CHECK(tok->id_of("<s>") == std::optional<int64_t>(1));
    CHECK_FALSE(tok->id_of("no-such-piece").has_value());
}

TEST_CASE("tokenizer: load_tokenizer fails with the path for missing or unknown inputs", "[data][tokenizer]") {
    TempDir d;
    CHECK_THROWS_WITH(load_tokenizer(d.str("nope")), Catch::Contains("nope"));
    CHECK_THROWS_WITH(load_tokenizer(d.str()), Catch::Contains("no tokenizer.json"));
    write_text(d.str("x.txt"), "hello");
    CHECK_THROWS_AS(load_tokenizer(d.str("x.txt")), TokenizerError);
    write_text(d.str("bad/tokenizer.json"), "{\"model\": [1,2");
    CHECK_THROWS_WITH(load_tokenizer(d.str("bad")), Catch::Contains("byte"));
    write_text(d.str("bad.model"), "not a protobuf");
    CHECK_THROWS_AS(load_tokenizer(d.str("bad.model")), TokenizerError);
}

TEST_CASE("tokenizer: idamoe-tokenize encodes the corpus to HF's ids and decodes them back", "[data][tokenizer]") {
    TempDir d;
    std::string bin = idamoe::test::binary_path("idamoe-tokenize");
    REQUIRE(std::filesystem::exists(bin));
    std::string tok = fixture_path("tokenizer/qwen2");
    std::string cmd = bin + " --tokenizer " + tok + " --jsonl " + fixture_path("tokenizer/corpus.jsonl") + " > " + d.str("ids.jsonl");
    REQUIRE(std::system(cmd.c_str()) == 0);
    auto got = read_jsonl(d.str("ids.jsonl"));
    auto want = read_jsonl(fixture_path("tokenizer/expected_ids.jsonl"));
    REQUIRE(got.size() == want.size());
    for (size_t i = 0; i < got.size(); ++i) CHECK(got[i] == want[i]);
    cmd = bin + " --tokenizer " + tok + " --decode --jsonl " + d.str("ids.jsonl") + " > " + d.str("text.jsonl");
    REQUIRE(std::system(cmd.c_str()) == 0);
    auto text = read_jsonl(d.str("text.jsonl"));
    auto check = read_jsonl(fixture_path("tokenizer/decode_check.jsonl"));
    REQUIRE(text.size() == check.size());
    for (size_t i = 0; i < text.size(); ++i) CHECK(text[i] == check[i]["decoded"]);
    // A bad line is reported on stderr, answered with null, and the exit status says so.
    write_text(d.str("bad.jsonl"), "\"ok\"\n[1,2\n");
    cmd = bin + " --tokenizer " + tok + " --jsonl " + d.str("bad.jsonl") + " > " + d.str("out.jsonl") + " 2> " + d.str("err.txt");
    CHECK(std::system(cmd.c_str()) != 0);
    auto out = read_jsonl(d.str("out.jsonl"));
    REQUIRE(out.size() == 2);
    CHECK(out[1].is_null());
}
