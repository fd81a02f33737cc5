// defines: load_tokenizer, utf8_sanitize, utf8_valid, nfc
//
// Picks the tokenizer family from the path and resolves eos/pad names from tokenizer_config.json.
#include "data/tokenizer.h"
#include "data/tokenizer_impl.h"

#include <utf8proc.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>

namespace fs = std::filesystem;

namespace idamoe::data {

namespace {

// Length of the valid UTF-8 sequence at s[i], or -k when the first k bytes are the maximal
// valid prefix of an invalid sequence (k >= 1): the Unicode "maximal subpart" rule that Python's
// errors="replace" decoder follows, so each such prefix becomes exactly one U+FFFD.
int utf8_step(const unsigned char * s, size_t n, size_t i) {
    unsigned char c = s[i];
    if (c < 0x80) return 1;
    int need;
    unsigned char lo = 0x80, hi = 0xBF;
    if (c >= 0xC2 && c <= 0xDF) need = 1;
    else if (c == 0xE0) { need = 2; lo = 0xA0; }
    else if ((c >= 0xE1 && c <= 0xEC) || c == 0xEE || c == 0xEF) need = 2;
    else if (c == 0xED) { need = 2; hi = 0x9F; }
    else if (c == 0xF0) { need = 3; lo = 0x90; }
    else if (c >= 0xF1 && c <= 0xF3) need = 3;
    else if (c == 0xF4) { need = 3; hi = 0x8F; }
    else return -1;
    for (int k = 1; k <= need; ++k) {
        if (i + k >= n) return -k;
        unsigned char d = s[i + k];
        unsigned char l = k == 1 ? lo : 0x80, h = k == 1 ? hi : 0xBF;
        if (d < l || d > h) return -k;
    }
    return need + 1;
}

std::string read_file(const std::string & path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw TokenizerError("cannot open " + path);
    return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

std::string token_name(const nlohmann::json & j) {
    if (j.is_string()) return j.get<std::string>();
    if (j.is_object() && j.contains("content") && j["content"].is_string()) return j["content"].get<std::string>();
    return "";
}

detail::SpecialNames read_special_names(const fs::path & dir) {
    detail::SpecialNames names;
    fs::path cfg = dir / "tokenizer_config.json";
    if (!fs::exists(cfg)) return names;
    try {
        auto j = nlohmann::json::parse(read_file(cfg.string()));
        if (j.contains("eos_token")) names.eos = token_name(j["eos_token"]);
        if (j.contains("pad_token")) names.pad = token_name(j["pad_token"]);
    } catch (const nlohmann::json::exception & e) {
        throw TokenizerError(cfg.string() + ": malformed JSON: " + e.what());
    }
    return names;
}

}  // namespace

bool utf8_valid(const std::string & s) {
    auto * p = reinterpret_cast<const unsigned char *>(s.data());
    for (size_t i = 0; i < s.size();) {
        int k = utf8_step(p, s.size(), i);
        if (k < 0) return false;
        i += k;
    }
    return true;
}

std::string utf8_sanitize(const std::string & s) {
    auto * p = reinterpret_cast<const unsigned char *>(s.data());
    std::string out;
    out.reserve(s.size());
    for (size_t i = 0; i < s.size();) {
        int k = utf8_step(p, s.size(), i);
        if (k > 0) {
            out.append(s, i, k);
            i += k;
        } else {
            out += "\xEF\xBF\xBD";
            i += -k;
        }
    }
    return out;
}

std::string nfc(const std::string & s) {
    bool ascii = true;
    for (unsigned char c : s)
        if (c >= 0x80) { ascii = false; break; }
    if (ascii) return s;  // ASCII is always NFC
    utf8proc_uint8_t * out = nullptr;
    utf8proc_ssize_t n = utf8proc_map(reinterpret_cast<const utf8proc_uint8_t *>(s.data()),
                                      static_cast<utf8proc_ssize_t>(s.size()), &out,
                                      static_cast<utf8proc_option_t>(UTF8PROC_STABLE | UTF8PROC_COMPOSE));
    if (n < 0) throw TokenizerError(std::string("NFC normalisation failed: ") + utf8proc_errmsg(n));
    std::string r(reinterpret_cast<char *>(out), static_cast<size_t>(n));
    std::free(out);
    return r;
}

std::shared_ptr<Tokenizer> load_tokenizer(const std::string & path) {
    fs::path p(path);
    if (!fs::exists(p)) throw TokenizerError("tokenizer path does not exist: " + path);
    if (fs::is_directory(p)) {
        auto names = read_special_names(p);
        if (fs::exists(p / "tokenizer.json")) return detail::make_bpe_tokenizer((p / "tokenizer.json").string(), names);
        if (fs::exists(p / "tokenizer.model")) return detail::make_sp_tokenizer((p / "tokenizer.model").string(), names);
        for (const auto & e : fs::directory_iterator(p))
            if (e.path().extension() == ".model") return detail::make_sp_tokenizer(e.path().string(), names);
        throw TokenizerError("no tokenizer.json or SentencePiece .model in " + path);
    }
    auto names = read_special_names(p.parent_path().empty() ? fs::path(".") : p.parent_path());
    if (p.extension() == ".json") return detail::make_bpe_tokenizer(path, names);
    if (p.extension() == ".model") return detail::make_sp_tokenizer(path, names);
    throw TokenizerError("cannot tell the tokenizer type of " + path +
                         " (expected a directory, a tokenizer.json or a SentencePiece .model)");
}

}  // namespace idamoe::data
