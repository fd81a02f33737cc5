// defines: BpeTokenizer (Hugging Face tokenizer.json, byte-level BPE), make_bpe_tokenizer
//
// Encode pipeline (HF tokenizers semantics, architectures.md §5.1):
//   1. split the raw text at added/special tokens (longest match, never normalised, never split);
//   2. normalise each remaining segment (the tokenizer.json "normalizer": NFC / NFKC / none);
//   3. pre-tokenise with the file's Split regex (PCRE2, UTF+UCP, JIT) and/or ByteLevel's GPT-2 regex;
//   4. map bytes to ids through the GPT-2 bytes_to_unicode table; 5. BPE merges by rank.
// BPE results are cached per pre-token in a sharded, mutex-protected map (thread-safe).
#include "data/tokenizer.h"
#include "data/tokenizer_impl.h"

#include <pcre2.h>
#include <utf8proc.h>

#include <algorithm>
#include <array>
#include <climits>
#include <cstdlib>
#include <functional>
#include <tuple>
#include <fstream>
#include <mutex>
#include <queue>
#include <shared_mutex>
#include <unordered_map>

namespace idamoe::data::detail {

namespace {

// GPT-2's pre-tokenizer, used by ByteLevel(use_regex=true).
const char * kGpt2Pattern = R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

std::string encode_cp(uint32_t cp) {
    std::string s;
    if (cp < 0x80) s += char(cp);
    else if (cp < 0x800) { s += char(0xC0 | (cp >> 6)); s += char(0x80 | (cp & 0x3F)); }
    else if (cp < 0x10000) { s += char(0xE0 | (cp >> 12)); s += char(0x80 | ((cp >> 6) & 0x3F)); s += char(0x80 | (cp & 0x3F)); }
    else { s += char(0xF0 | (cp >> 18)); s += char(0x80 | ((cp >> 12) & 0x3F)); s += char(0x80 | ((cp >> 6) & 0x3F)); s += char(0x80 | (cp & 0x3F)); }
    return s;
}

uint32_t decode_cp(const std::string & s, size_t & i) {
    unsigned char c = s[i];
    int n = utf8_len(c);
    uint32_t cp = n == 1 ? c : n == 2 ? (c & 0x1F) : n == 3 ? (c & 0x0F) : (c & 0x07);
    for (int k = 1; k < n && i + k < s.size(); ++k) cp = (cp << 6) | (static_cast<unsigned char>(s[i + k]) & 0x3F);
    i += n;
    return cp;
}

// GPT-2 bytes_to_unicode (architectures.md §5.3): printable bytes map to themselves, the other 68
// bytes, in increasing order, to U+0100, U+0101, ...
std::array<uint32_t, 256> bytes_to_unicode() {
    std::array<uint32_t, 256> t{};
    int n = 0;
    for (int b = 0; b < 256; ++b) {
        bool keep = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
        t[b] = keep ? b : 256 + n++;
    }
    return t;
}

// One compiled regex. Match data and the JIT stack are per call / per thread (pcre2 objects are
// not shareable across threads while matching).
class Regex {
public:
    Regex(const std::string & pattern, bool literal) {
        int err = 0;
        PCRE2_SIZE off = 0;
        uint32_t opts = PCRE2_UTF | PCRE2_UCP | (literal ? PCRE2_LITERAL : 0);
        code_ = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(), opts, &err, &off, nullptr);
        if (!code_) {
            PCRE2_UCHAR msg[256];
            pcre2_get_error_message(err, msg, sizeof msg);
            throw TokenizerError("pre-tokenizer regex does not compile at offset " + std::to_string(off) + ": " +
                                 reinterpret_cast<char *>(msg) + " (pattern " + pattern + ")");
        }
        jit_ = pcre2_jit_compile(code_, PCRE2_JIT_COMPLETE) == 0;
    }
    ~Regex() { pcre2_code_free(code_); }
    Regex(const Regex &) = delete;
    Regex & operator=(const Regex &) = delete;

    // Appends the pieces of [b, e) (matches and the gaps between them, HF "Isolated") to out.
    void split(const std::string & s, size_t b, size_t e, std::vector<std::pair<size_t, size_t>> & out) const {
        struct Tls {
            pcre2_match_context * mctx = pcre2_match_context_create(nullptr);
            pcre2_jit_stack * stack = pcre2_jit_stack_create(32 * 1024, 4 * 1024 * 1024, nullptr);
            Tls() { pcre2_jit_stack_assign(mctx, nullptr, stack); }
            ~Tls() { pcre2_jit_stack_free(stack); pcre2_match_context_free(mctx); }
        };
        thread_local Tls tls;
        pcre2_match_data * md = pcre2_match_data_create_from_pattern(code_, nullptr);
        auto subject = reinterpret_cast<PCRE2_SPTR>(s.data());
        size_t gap = b, pos = b;
        while (pos < e) {
            int rc = jit_ ? pcre2_jit_match(code_, subject, e, pos, 0, md, tls.mctx)
                          : pcre2_match(code_, subject, e, pos, PCRE2_NO_UTF_CHECK, md, tls.mctx);
            if (rc == PCRE2_ERROR_NOMATCH) break;
            if (rc < 0) {
                pcre2_match_data_free(md);
                throw TokenizerError("pre-tokenizer regex failed with PCRE2 error " + std::to_string(rc));
            }
            PCRE2_SIZE * ov = pcre2_get_ovector_pointer(md);
            size_t ms = ov[0], me = ov[1];
            if (me == ms) {  // empty match: step over one character, it stays in the gap
                pos = ms + utf8_len(static_cast<unsigned char>(s[ms]));
                continue;
            }
            if (ms > gap) out.emplace_back(gap, ms);
            out.emplace_back(ms, me);
            gap = pos = me;
        }
        if (gap < e) out.emplace_back(gap, e);
        pcre2_match_data_free(md);
    }

private:
    pcre2_code * code_ = nullptr;
    bool jit_ = false;
};

struct PreStep {
    std::unique_ptr<Regex> regex;  // null = no split
    bool add_prefix_space = false;
};

class BpeTokenizer final : public Tokenizer {
public:
    BpeTokenizer(const std::string & path, const SpecialNames & names) : path_(path) {
        std::ifstream in(path, std::ios::binary);
        if (!in) throw TokenizerError("cannot open " + path);
        nlohmann::json j;
        try {
            j = nlohmann::json::parse(in);
        } catch (const nlohmann::json::parse_error & e) {
            throw TokenizerError(path + ": malformed JSON at byte " + std::to_string(e.byte) + ": " + e.what());
        }
        try {
            load(j);
        } catch (const nlohmann::json::exception & e) {
            throw TokenizerError(path + ": unexpected tokenizer.json layout: " + e.what());
        }
        resolve_specials(names);
    }

    std::vector<int64_t> encode(const std::string & raw) const override {
        const std::string text = utf8_valid(raw) ? raw : utf8_sanitize(raw);
        std::vector<int64_t> ids;
        ids.reserve(text.size() / 3 + 4);
        size_t seg = 0, i = 0;
        while (i < text.size()) {
            unsigned char c = text[i];
            if (added_first_[c]) {
                if (const Added * a = match_added(text, i)) {
                    if (i > seg) encode_segment(text.substr(seg, i - seg), ids);
                    ids.push_back(a->id);
                    i += a->content.size();
                    seg = i;
                    continue;
                }
            }
            ++i;
        }
        if (seg < text.size()) encode_segment(text.substr(seg), ids);
        return ids;
    }

    std::string decode(const std::vector<int64_t> & ids) const override {
        std::string bytes;
        for (int64_t id : ids) {
            if (id < 0 || id >= static_cast<int64_t>(id_to_token_.size()) || !has_id_[id])
                throw TokenizerError("decode: id " + std::to_string(id) + " is not in the vocabulary of " + path_);
            if (is_added_[id]) {
                bytes += id_to_token_[id];
                continue;
            }
            const std::string & t = id_to_token_[id];
            for (size_t k = 0; k < t.size();) {
                uint32_t cp = decode_cp(t, k);
                auto it = unicode_to_byte_.find(cp);
                if (it != unicode_to_byte_.end()) bytes += char(it->second);
                else bytes += encode_cp(cp);  // not a byte-level char: keep it as text
            }
        }
        return utf8_sanitize(bytes);
    }

    std::optional<int64_t> id_of(const std::string & token) const override {
        for (const auto & a : added_)
            if (a.content == token) return a.id;
        auto it = vocab_.find(token);
        if (it == vocab_.end()) return std::nullopt;
        return it->second;
    }
    std::string token_of(int64_t id) const override {
        if (id < 0 || id >= static_cast<int64_t>(id_to_token_.size()) || !has_id_[id])
            throw TokenizerError("token_of: id " + std::to_string(id) + " out of vocabulary");
        return id_to_token_[id];
    }
    int64_t vocab_size() const override { return static_cast<int64_t>(id_to_token_.size()); }
    int64_t eos_id() const override { return eos_; }
    int64_t pad_id() const override { return pad_; }
    std::vector<std::pair<std::string, int64_t>> special_tokens() const override {
        std::vector<std::pair<std::string, int64_t>> r;
        for (const auto & a : added_) r.emplace_back(a.content, a.id);
        return r;
    }
    std::string describe() const override {
        return "byte-level BPE " + path_ + " (" + std::to_string(vocab_.size()) + " tokens, " +
               std::to_string(merges_.size()) + " merges, " + std::to_string(added_.size()) + " added, normalizer " +
               (normalizer_.empty() ? "none" : normalizer_) + ")";
    }

private:
    struct Added {
        std::string content;
        int64_t id;
    };
    struct Merge {
        int32_t rank, merged;
    };
    static constexpr size_t kShards = 16;
    static constexpr size_t kMaxCachedPiece = 128;        // bytes; longer pieces are rare and not cached
    static constexpr size_t kMaxCacheEntries = 1 << 18;   // per shard; cleared when full
    struct Shard {
        mutable std::shared_mutex mu;
        std::unordered_map<std::string, std::vector<int32_t>> map;
    };

    void load(const nlohmann::json & j) {
        const auto & model = j.at("model");
        std::string type = model.value("type", "BPE");
        if (type != "BPE") throw TokenizerError(path_ + ": model type " + type + " is not supported (only BPE)");
        if (model.value("byte_fallback", false))
            throw TokenizerError(path_ + ": byte_fallback BPE (SentencePiece-converted) is not supported; "
                                         "point data.tokenizer at the tokenizer.model instead");
        ignore_merges_ = model.value("ignore_merges", false);
        int64_t max_id = -1;
        for (auto it = model.at("vocab").begin(); it != model.at("vocab").end(); ++it) {
            int64_t id = it.value().get<int64_t>();
            vocab_.emplace(it.key(), static_cast<int32_t>(id));
            max_id = std::max(max_id, id);
        }
        if (j.contains("added_tokens") && j["added_tokens"].is_array())
            for (const auto & a : j["added_tokens"]) {
                added_.push_back({a.at("content").get<std::string>(), a.at("id").get<int64_t>()});
                max_id = std::max(max_id, added_.back().id);
            }
        // Longest first, so a prefix never shadows a longer token starting at the same byte.
        std::stable_sort(added_.begin(), added_.end(),
                         [](const Added & a, const Added & b) { return a.content.size() > b.content.size(); });
        for (const auto & a : added_)
            if (!a.content.empty()) added_first_[static_cast<unsigned char>(a.content[0])] = true;

        id_to_token_.assign(max_id + 1, "");
        has_id_.assign(max_id + 1, false);
        is_added_.assign(max_id + 1, false);
        for (const auto & [tok, id] : vocab_) { id_to_token_[id] = tok; has_id_[id] = true; }
        for (const auto & a : added_) { id_to_token_[a.id] = a.content; has_id_[a.id] = true; is_added_[a.id] = true; }

        auto b2u = bytes_to_unicode();
        for (int b = 0; b < 256; ++b) {
            unicode_to_byte_[b2u[b]] = static_cast<uint8_t>(b);
            auto it = vocab_.find(encode_cp(b2u[b]));
            if (it == vocab_.end())
                throw TokenizerError(path_ + ": byte-level vocabulary lacks the token for byte " + std::to_string(b));
            byte_id_[b] = it->second;
        }

        const auto & merges = model.at("merges");
        merges_.reserve(merges.size() * 2);
        int32_t rank = 0;
        for (const auto & m : merges) {
            std::string a, b;
            if (m.is_string()) {  // "a b" (Qwen2 / GPT-2 files)
                std::string s = m.get<std::string>();
                size_t sp = s.find(' ');
                if (sp == std::string::npos) throw TokenizerError(path_ + ": merge without a space: " + s);
                a = s.substr(0, sp);
                b = s.substr(sp + 1);
            } else {  // ["a", "b"] (newer tokenizers)
                a = m.at(0).get<std::string>();
                b = m.at(1).get<std::string>();
            }
            auto ia = vocab_.find(a), ib = vocab_.find(b), iab = vocab_.find(a + b);
            if (ia == vocab_.end() || ib == vocab_.end() || iab == vocab_.end())
                throw TokenizerError(path_ + ": merge " + std::to_string(rank) + " (" + a + " " + b +
                                     ") names a token missing from the vocabulary");
            merges_.emplace(key(ia->second, ib->second), Merge{rank, iab->second});
            ++rank;
        }

        // Normalizer: NFC / NFKC / none (a Sequence of those is accepted too).
        std::function<void(const nlohmann::json &)> norm = [&](const nlohmann::json & n) {
            if (n.is_null()) return;
            std::string t = n.at("type").get<std::string>();
            if (t == "Sequence") { for (const auto & s : n.at("normalizers")) norm(s); }
            else if (t == "NFC" || t == "NFKC") normalizer_ = t;
            else throw TokenizerError(path_ + ": normalizer " + t + " is not supported (NFC, NFKC or none)");
        };
        if (j.contains("normalizer")) norm(j["normalizer"]);

        bool byte_level = false;
        std::function<void(const nlohmann::json &)> pre = [&](const nlohmann::json & p) {
            if (p.is_null()) return;
            std::string t = p.at("type").get<std::string>();
            if (t == "Sequence") {
                for (const auto & s : p.at("pretokenizers")) pre(s);
            } else if (t == "Split") {
                std::string behavior = p.value("behavior", "Isolated");
                if (behavior != "Isolated" || p.value("invert", false))
                    throw TokenizerError(path_ + ": Split behavior " + behavior + " (or invert) is not supported");
                const auto & pat = p.at("pattern");
                PreStep s;
                if (pat.contains("Regex")) s.regex = std::make_unique<Regex>(pat["Regex"].get<std::string>(), false);
                else s.regex = std::make_unique<Regex>(pat.at("String").get<std::string>(), true);
                pre_.push_back(std::move(s));
            } else if (t == "ByteLevel") {
                byte_level = true;
                PreStep s;
                s.add_prefix_space = p.value("add_prefix_space", false);
                if (p.value("use_regex", true)) s.regex = std::make_unique<Regex>(kGpt2Pattern, false);
                pre_.push_back(std::move(s));
            } else {
                throw TokenizerError(path_ + ": pre_tokenizer " + t + " is not supported (Split, ByteLevel, Sequence)");
            }
        };
        if (j.contains("pre_tokenizer")) pre(j["pre_tokenizer"]);
        if (!byte_level) throw TokenizerError(path_ + ": only byte-level BPE (a ByteLevel pre_tokenizer) is supported");
    }

    void resolve_specials(const SpecialNames & names) {
        auto find = [&](const std::string & s) -> int64_t {
            if (s.empty()) return -1;
            auto id = id_of(s);
            return id ? *id : -1;
        };
        eos_ = find(names.eos);
        for (const char * c : {"<|endoftext|>", "</s>", "<|im_end|>"})
            if (eos_ < 0) eos_ = find(c);
        pad_ = find(names.pad);
        if (pad_ < 0) pad_ = eos_;
    }

    static uint64_t key(int32_t a, int32_t b) { return (uint64_t(uint32_t(a)) << 32) | uint32_t(b); }

    const Added * match_added(const std::string & text, size_t i) const {
        for (const auto & a : added_)
            if (!a.content.empty() && text.compare(i, a.content.size(), a.content) == 0) return &a;
        return nullptr;
    }

    void encode_segment(const std::string & raw, std::vector<int64_t> & ids) const {
        std::string text = normalizer_.empty() ? raw : normalize(raw);
        std::vector<std::pair<size_t, size_t>> pieces{{0, text.size()}}, next;
        for (const auto & step : pre_) {
            if (step.add_prefix_space && !text.empty() && text[0] != ' ') {
                text.insert(text.begin(), ' ');
                for (auto & p : pieces) { p.first += p.first ? 1 : 0; p.second += 1; }
            }
            if (!step.regex) continue;
            next.clear();
            for (auto [b, e] : pieces) step.regex->split(text, b, e, next);
            pieces.swap(next);
        }
        for (auto [b, e] : pieces) bpe_piece(text.data() + b, e - b, ids);
    }

    std::string normalize(const std::string & s) const {
        if (normalizer_ == "NFC") return nfc(s);
        // NFKC: compatibility decomposition + composition.
        bool ascii = std::all_of(s.begin(), s.end(), [](char c) { return static_cast<unsigned char>(c) < 0x80; });
        if (ascii) return s;
        utf8proc_uint8_t * out = nullptr;
        auto n = utf8proc_map(reinterpret_cast<const utf8proc_uint8_t *>(s.data()), static_cast<utf8proc_ssize_t>(s.size()),
                              &out, static_cast<utf8proc_option_t>(UTF8PROC_STABLE | UTF8PROC_COMPOSE | UTF8PROC_COMPAT));
        if (n < 0) throw TokenizerError("NFKC normalisation failed");
        std::string r(reinterpret_cast<char *>(out), n);
        std::free(out);
        return r;
    }

    void bpe_piece(const char * p, size_t n, std::vector<int64_t> & ids) const {
        if (n == 0) return;
        const bool cacheable = n <= kMaxCachedPiece;
        std::string k;
        Shard * shard = nullptr;
        if (cacheable) {
            k.assign(p, n);
            shard = &shards_[std::hash<std::string>{}(k) % kShards];
            std::shared_lock<std::shared_mutex> lock(shard->mu);
            auto it = shard->map.find(k);
            if (it != shard->map.end()) {
                ids.insert(ids.end(), it->second.begin(), it->second.end());
                return;
            }
        }
        std::vector<int32_t> syms(n);
        for (size_t i = 0; i < n; ++i) syms[i] = byte_id_[static_cast<unsigned char>(p[i])];
        if (ignore_merges_ && n > 1) {
            std::string u;
            auto b2u = bytes_to_unicode();
            for (size_t i = 0; i < n; ++i) u += encode_cp(b2u[static_cast<unsigned char>(p[i])]);
            auto it = vocab_.find(u);
            if (it != vocab_.end()) syms.assign(1, it->second);
        }
        if (syms.size() > 1) {
            if (syms.size() <= 48) merge_small(syms);
            else merge_large(syms);
        }
        ids.insert(ids.end(), syms.begin(), syms.end());
        if (cacheable) {
            std::unique_lock<std::shared_mutex> lock(shard->mu);
            if (shard->map.size() >= kMaxCacheEntries) shard->map.clear();
            shard->map.emplace(std::move(k), std::move(syms));
        }
    }

    // Repeatedly merge the lowest-rank adjacent pair (leftmost on ties). O(n^2), fast for short pieces.
    void merge_small(std::vector<int32_t> & s) const {
        while (s.size() > 1) {
            int32_t best = INT32_MAX, merged = -1;
            size_t at = 0;
            for (size_t i = 0; i + 1 < s.size(); ++i) {
                auto it = merges_.find(key(s[i], s[i + 1]));
                if (it != merges_.end() && it->second.rank < best) {
                    best = it->second.rank;
                    merged = it->second.merged;
                    at = i;
                }
            }
            if (merged < 0) break;
            s[at] = merged;
            s.erase(s.begin() + at + 1);
        }
    }

    // The same order of merges with a (rank, position) heap over a linked list: O(n log n).
    void merge_large(std::vector<int32_t> & s) const {
        const int n = static_cast<int>(s.size());
        std::vector<int> prev(n), next(n);
        std::vector<char> alive(n, 1);
        for (int i = 0; i < n; ++i) { prev[i] = i - 1; next[i] = i + 1 < n ? i + 1 : -1; }
        using Item = std::tuple<int32_t, int, int32_t, int32_t>;  // rank, pos, left id, right id
        std::priority_queue<Item, std::vector<Item>, std::greater<Item>> heap;
        auto push = [&](int i) {
            if (i < 0 || next[i] < 0) return;
            auto it = merges_.find(key(s[i], s[next[i]]));
            if (it != merges_.end()) heap.emplace(it->second.rank, i, s[i], s[next[i]]);
        };
        for (int i = 0; i + 1 < n; ++i) push(i);
        while (!heap.empty()) {
            auto [rank, i, l, r] = heap.top();
            heap.pop();
            if (!alive[i] || s[i] != l || next[i] < 0 || s[next[i]] != r) continue;
            int j = next[i];
            s[i] = merges_.at(key(l, r)).merged;
            alive[j] = 0;
            next[i] = next[j];
            if (next[j] >= 0) prev[next[j]] = i;
            push(prev[i]);
            push(i);
        }
        std::vector<int32_t> out;
        for (int i = 0; i >= 0; i = next[i]) out.push_back(s[i]);
        s.swap(out);
    }

    std::string path_;
    std::unordered_map<std::string, int32_t> vocab_;
    std::unordered_map<uint64_t, Merge> merges_;
    std::vector<Added> added_;
    std::array<bool, 256> added_first_{};
    std::vector<std::string> id_to_token_;
    std::vector<char> has_id_, is_added_;
    std::array<int32_t, 256> byte_id_{};
    std::unordered_map<uint32_t, uint8_t> unicode_to_byte_;
    std::vector<PreStep> pre_;
    std::string normalizer_;
    bool ignore_merges_ = false;
    int64_t eos_ = -1, pad_ = -1;
    mutable std::array<Shard, kShards> shards_;
};

}  // namespace

std::shared_ptr<Tokenizer> make_bpe_tokenizer(const std::string & json_path, const SpecialNames & names) {
    return std::make_shared<BpeTokenizer>(json_path, names);
}

}  // namespace idamoe::data::detail
