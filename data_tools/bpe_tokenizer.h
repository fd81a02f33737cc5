// defines: byte_level_alphabet, split_special, Pretokenizer, BpeModel, BpeEncoder, train_bpe,
//          bpe_to_hf_json, bpe_from_hf_json
//
// A Qwen2-format byte-level BPE trainer for the demo's tiny vocabulary. Format and pre-tokenizer
// follow Qwen2's tokenizer.json (tests/fixtures/README.shared.md §2): the Qwen regex split, GPT-2's
// byte-to-unicode alphabet as ids 0..255, merges as "a b" strings, special tokens added after the
// merges. Why BPE and not SentencePiece: MoE-LLaVA's label masking (protocol §2.2) assumes a
// tokenizer that adds no dummy prefix and keeps the space before a word inside that word's token
// ("ASSISTANT: " alone is one token longer than in context); byte-level BPE behaves exactly so.
#pragma once

#include <nlohmann/json.hpp>

#include <pcre2.h>
#include <utf8proc.h>

#include <algorithm>
#include <cstdlib>
#include <map>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace idamoe::demo {

// GPT-2 bytes_to_unicode (openai/gpt-2 src/encoder.py): printable bytes map to themselves, the
// rest to U+0100 + n. Returned in Qwen2's id order: '!'..'~', '¡'..'¬', '®'..'ÿ', then the rest.
inline std::vector<std::pair<int, std::string>> byte_level_alphabet() {
    auto utf8 = [](int cp) {
        std::string s;
        if (cp < 0x80) s += static_cast<char>(cp);
        else {
            s += static_cast<char>(0xC0 | (cp >> 6));
            s += static_cast<char>(0x80 | (cp & 0x3F));
        }
        return s;
    };
    std::vector<std::pair<int, std::string>> out;
    std::vector<bool> used(256, false);
    for (int b = 0; b < 256; ++b) {
        bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
        if (printable) { out.emplace_back(b, utf8(b)); used[b] = true; }
    }
    int n = 0;
    for (int b = 0; b < 256; ++b)
        if (!used[b]) out.emplace_back(b, utf8(256 + n++));
    return out;
}

// Qwen2's pre-tokenizer regex (Split, behavior Isolated).
inline const char * kQwen2Pattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

class Pretokenizer {
public:
    Pretokenizer() {
        int err = 0;
        PCRE2_SIZE off = 0;
        re_ = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(kQwen2Pattern), PCRE2_ZERO_TERMINATED, PCRE2_UTF | PCRE2_UCP, &err, &off, nullptr);
        if (!re_) throw std::runtime_error("pcre2_compile of the Qwen2 pre-tokenizer regex failed at offset " + std::to_string(off));
        md_ = pcre2_match_data_create_from_pattern(re_, nullptr);
    }
    ~Pretokenizer() {
        pcre2_match_data_free(md_);
        pcre2_code_free(re_);
    }
    Pretokenizer(const Pretokenizer &) = delete;
    Pretokenizer & operator=(const Pretokenizer &) = delete;

    std::vector<std::string> split(const std::string & text) const {
        std::vector<std::string> out;
        PCRE2_SIZE pos = 0;
        while (pos < text.size()) {
            int rc = pcre2_match(re_, reinterpret_cast<PCRE2_SPTR>(text.data()), text.size(), pos, 0, md_, nullptr);
            if (rc < 0) break;  // the last alternative \s+ plus the others cover every character
            PCRE2_SIZE * ov = pcre2_get_ovector_pointer(md_);
            if (ov[1] == ov[0]) { ++pos; continue; }
            out.emplace_back(text.substr(ov[0], ov[1] - ov[0]));
            pos = ov[1];
        }
        return out;
    }

private:
    pcre2_code * re_ = nullptr;
    pcre2_match_data * md_ = nullptr;
};

// Splits text around exact occurrences of special tokens; returns (piece, is_special) in order.
inline std::vector<std::pair<std::string, bool>> split_special(const std::string & text, const std::vector<std::string> & specials) {
    std::vector<std::pair<std::string, bool>> out;
    size_t pos = 0;
    while (pos < text.size()) {
        size_t best = std::string::npos, best_len = 0;
        for (const auto & s : specials) {
            size_t f = text.find(s, pos);
            if (f != std::string::npos && (f < best || (f == best && s.size() > best_len))) { best = f; best_len = s.size(); }
        }
        if (best == std::string::npos) { out.emplace_back(text.substr(pos), false); break; }
        if (best > pos) out.emplace_back(text.substr(pos, best - pos), false);
        out.emplace_back(text.substr(best, best_len), true);
        pos = best + best_len;
    }
    return out;
}

struct BpeModel {
    std::vector<std::string> id_to_token;                      // base alphabet, then merge results
    std::vector<std::pair<std::string, std::string>> merges;   // in rank order
    std::vector<std::string> specials;                         // ids follow id_to_token

    int64_t size() const { return static_cast<int64_t>(id_to_token.size() + specials.size()); }
    int64_t special_id(const std::string & s) const {
        auto it = std::find(specials.begin(), specials.end(), s);
        if (it == specials.end()) throw std::out_of_range("special token " + s + " is not in the tokenizer");
        return static_cast<int64_t>(id_to_token.size() + (it - specials.begin()));
    }

};

// Encodes like HF's BPE model: special tokens are split out first, the rest is NFC-normalised,
// split by the Qwen2 regex, mapped to the byte-level alphabet, and merged lowest rank first.
class BpeEncoder {
public:
    explicit BpeEncoder(const BpeModel & m) : m_(m) {
        for (size_t i = 0; i < m.id_to_token.size(); ++i) vocab_.emplace(m.id_to_token[i], static_cast<int64_t>(i));
        for (size_t i = 0; i < m.merges.size(); ++i) rank_.emplace(m.merges[i], i);
        for (const auto & [b, s] : byte_level_alphabet()) byte_sym_[static_cast<size_t>(b)] = s;
    }
    std::vector<int64_t> encode(const std::string & text) const {
        std::vector<int64_t> ids;
        for (const auto & [piece, special] : split_special(text, m_.specials)) {
            if (special) { ids.push_back(m_.special_id(piece)); continue; }
            for (const auto & word : pre_.split(nfc(piece))) {
                std::vector<std::string> sym;
                for (unsigned char c : word) sym.push_back(byte_sym_[c]);
                while (sym.size() > 1) {
                    size_t best = SIZE_MAX, at = 0;
                    for (size_t i = 0; i + 1 < sym.size(); ++i) {
                        auto it = rank_.find({sym[i], sym[i + 1]});
                        if (it != rank_.end() && it->second < best) { best = it->second; at = i; }
                    }
                    if (best == SIZE_MAX) break;
                    sym[at] += sym[at + 1];
                    sym.erase(sym.begin() + static_cast<std::ptrdiff_t>(at) + 1);
                }
                for (const auto & s : sym) {
                    auto it = vocab_.find(s);
                    if (it == vocab_.end()) throw std::runtime_error("BPE: merged symbol '" + s + "' is not in the vocabulary");
                    ids.push_back(it->second);
                }
            }
        }
        return ids;
    }

private:
    static std::string nfc(const std::string & s) {
        utf8proc_uint8_t * out = utf8proc_NFC(reinterpret_cast<const utf8proc_uint8_t *>(s.c_str()));
        if (!out) return s;  // invalid UTF-8: leave as is (byte-level BPE still encodes it)
        std::string r(reinterpret_cast<char *>(out));
        std::free(out);
        return r;
    }
    const BpeModel & m_;
    Pretokenizer pre_;
    std::map<std::string, int64_t> vocab_;
    std::map<std::pair<std::string, std::string>, size_t> rank_;
    std::vector<std::string> byte_sym_ = std::vector<std::string>(256);
};

// A BpeModel from a Qwen2-format tokenizer.json (ids of model.vocab must be 0..N-1, specials after).
inline BpeModel bpe_from_hf_json(const nlohmann::json & j) {
    BpeModel m;
    const auto & vocab = j.at("model").at("vocab");
    m.id_to_token.resize(vocab.size());
    for (const auto & [tok, id] : vocab.items()) {
        const size_t i = id.get<size_t>();
        if (i >= m.id_to_token.size()) throw std::runtime_error("tokenizer.json: vocab id " + std::to_string(i) + " out of range");
        m.id_to_token[i] = tok;
    }
    for (const auto & mg : j.at("model").at("merges")) {
        const std::string s = mg.get<std::string>();
        const size_t sp = s.find(' ');
        if (sp == std::string::npos) throw std::runtime_error("tokenizer.json: merge '" + s + "' is not 'a b'");
        m.merges.emplace_back(s.substr(0, sp), s.substr(sp + 1));
    }
    for (const auto & t : j.at("added_tokens")) {
        if (t.at("id").get<size_t>() != m.id_to_token.size() + m.specials.size())
            throw std::runtime_error("tokenizer.json: added tokens must follow the vocabulary contiguously");
        m.specials.push_back(t.at("content").get<std::string>());
    }
    return m;
}

// Trains merges on `texts` until the vocabulary (alphabet + merges + specials) has `vocab_size`
// entries or no pair occurs twice. Ties go to the lexicographically smallest pair: deterministic.
inline BpeModel train_bpe(const std::vector<std::string> & texts, int64_t vocab_size, const std::vector<std::string> & specials) {
    BpeModel m;
    m.specials = specials;
    std::vector<std::string> byte_sym(256);
    for (const auto & [b, s] : byte_level_alphabet()) {
        byte_sym[static_cast<size_t>(b)] = s;
        m.id_to_token.push_back(s);
    }
    if (vocab_size < m.size()) throw std::invalid_argument("vocab_size " + std::to_string(vocab_size) + " is below the 256-byte alphabet plus specials");
    Pretokenizer pre;
    std::map<std::string, int64_t> word_count;
    for (const auto & t : texts)
        for (const auto & [piece, special] : split_special(t, specials))
            if (!special)
                for (const auto & w : pre.split(piece)) ++word_count[w];
    std::vector<std::vector<std::string>> words;
    std::vector<int64_t> counts;
    for (const auto & [w, c] : word_count) {
        std::vector<std::string> sym;
        for (unsigned char ch : w) sym.push_back(byte_sym[ch]);
        words.push_back(std::move(sym));
        counts.push_back(c);
    }
    std::map<std::string, bool> known;  // tokens already in the vocabulary
    for (const auto & s : m.id_to_token) known[s] = true;
    while (m.size() < vocab_size) {
        std::map<std::pair<std::string, std::string>, int64_t> pairs;
        for (size_t w = 0; w < words.size(); ++w)
            for (size_t i = 0; i + 1 < words[w].size(); ++i) pairs[{words[w][i], words[w][i + 1]}] += counts[w];
        std::pair<std::string, std::string> best;
        int64_t best_n = 1;  // a pair must occur at least twice to be worth a token
        for (const auto & [p, n] : pairs)
            if (n > best_n) { best = p; best_n = n; }  // std::map order: first of the tied is smallest
        if (best_n <= 1) break;
        m.merges.push_back(best);
        const std::string merged = best.first + best.second;
        if (!known[merged]) { known[merged] = true; m.id_to_token.push_back(merged); }
        for (auto & sym : words) {
            std::vector<std::string> next;
            for (size_t i = 0; i < sym.size(); ++i) {
                if (i + 1 < sym.size() && sym[i] == best.first && sym[i + 1] == best.second) { next.push_back(merged); ++i; }
                else next.push_back(sym[i]);
            }
            sym = std::move(next);
        }
    }
    return m;
}

// The Hugging Face tokenizer.json of a trained model, in Qwen2's layout.
inline nlohmann::ordered_json bpe_to_hf_json(const BpeModel & m) {
    using oj = nlohmann::ordered_json;
    oj vocab = oj::object();
    for (size_t i = 0; i < m.id_to_token.size(); ++i) vocab[m.id_to_token[i]] = i;
    oj merges = oj::array();
    for (const auto & [a, b] : m.merges) merges.push_back(a + " " + b);
    oj added = oj::array();
    for (const auto & s : m.specials)
        added.push_back({{"id", m.special_id(s)}, {"content", s}, {"single_word", false}, {"lstrip", false},
                         {"rstrip", false}, {"normalized", false}, {"special", true}});
    oj byte_level = {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", false}, {"use_regex", false}};
    return {{"version", "1.0"},
            {"truncation", nullptr},
            {"padding", nullptr},
            {"added_tokens", added},
            {"normalizer", {{"type", "NFC"}}},
            {"pre_tokenizer", {{"type", "Sequence"},
                               {"pretokenizers", oj::array({{{"type", "Split"}, {"pattern", {{"Regex", kQwen2Pattern}}},
                                                             {"behavior", "Isolated"}, {"invert", false}},
                                                            byte_level})}}},
            {"post_processor", byte_level},
            {"decoder", byte_level},
            {"model", {{"type", "BPE"}, {"dropout", nullptr}, {"unk_token", nullptr}, {"continuing_subword_prefix", ""},
                       {"end_of_word_suffix", ""}, {"fuse_unk", false}, {"byte_fallback", false}, {"ignore_merges", false},
                       {"vocab", vocab}, {"merges", merges}}}};
}

}  // namespace idamoe::demo
