// defines: Tokenizer, load_tokenizer, TokenizerError, utf8_sanitize, nfc
//
// One interface for the two tokenizer families LLaVA-style models ship:
//   * Hugging Face tokenizer.json byte-level BPE (Qwen2, StableLM-2 / Arcade100k, GPT-2 style),
//     implemented here (bpe_tokenizer.cpp) with PCRE2 for the pre-tokenizer regex and utf8proc for NFC;
//   * SentencePiece .model files (Llama/Vicuna style), through libsentencepiece (sp_tokenizer.cpp).
// Encoding never adds BOS/EOS (HF add_special_tokens=false; Qwen2 and StableLM-2 add none anyway).
// Special / added tokens are recognised anywhere in the text and never split (HF semantics), which is
// how templates put <|endoftext|>, <|im_start|>, ... into a prompt.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

namespace idamoe::data {

struct TokenizerError : std::runtime_error {
    using std::runtime_error::runtime_error;
};

class Tokenizer {
public:
    virtual ~Tokenizer() = default;

    // Text → ids. Invalid UTF-8 is replaced by U+FFFD first (see utf8_sanitize). Thread-safe.
    virtual std::vector<int64_t> encode(const std::string & text) const = 0;
    // Ids → text; special tokens decode to their literal text; invalid UTF-8 → U+FFFD. Throws on
    // an id outside the vocabulary (negative placeholders such as -200 included).
    virtual std::string decode(const std::vector<int64_t> & ids) const = 0;
    // The id of one vocabulary entry or added token, in the tokenizer's own spelling
    // (byte-level: "Ġthe"); nullopt when absent.
    virtual std::optional<int64_t> id_of(const std::string & token) const = 0;
    // The surface string of one id (byte-level tokens are returned in their byte-level spelling).
    virtual std::string token_of(int64_t id) const = 0;
    virtual int64_t vocab_size() const = 0;   // 1 + the largest id
    virtual int64_t eos_id() const = 0;       // -1 when the tokenizer defines none
    virtual int64_t pad_id() const = 0;       // pad token; falls back to eos (see load_tokenizer)
    // Special / added tokens that encode() matches as a whole, with their ids.
    virtual std::vector<std::pair<std::string, int64_t>> special_tokens() const = 0;
    std::optional<int64_t> special_id(const std::string & text) const {
        for (const auto & [s, id] : special_tokens())
            if (s == text) return id;
        return std::nullopt;
    }
    virtual std::string describe() const = 0;  // one line for logs
};

// Picks the implementation from PATH:
//   * a directory holding tokenizer.json (preferred) or tokenizer.model / *.model;
//   * a tokenizer.json file;
//   * a SentencePiece .model file.
// eos/pad come from tokenizer_config.json next to the file when present (eos_token / pad_token,
// as string or {"content": ...}); otherwise eos = the first of <|endoftext|>, </s>, <|im_end|>
// that exists, and pad = eos. Attention masks are built from lengths, never from ids == pad,
// so pad == eos is safe (unlike MoE-LLaVA, which needs pad != eos for its length count).
std::shared_ptr<Tokenizer> load_tokenizer(const std::string & path);

// Replaces every maximal invalid UTF-8 subsequence by U+FFFD (Python errors="replace" semantics).
std::string utf8_sanitize(const std::string & s);
bool utf8_valid(const std::string & s);
// Unicode NFC of valid UTF-8 (utf8proc). Throws TokenizerError on invalid input.
std::string nfc(const std::string & s);

}  // namespace idamoe::data
