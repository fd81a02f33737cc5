// defines: make_bpe_tokenizer, make_sp_tokenizer, TokenIds — internal factories behind load_tokenizer
#pragma once

#include "data/tokenizer.h"

#include <nlohmann/json.hpp>

namespace idamoe::data::detail {

// eos/pad names resolved from tokenizer_config.json (empty = not given).
struct SpecialNames {
    std::string eos, pad;
};

std::shared_ptr<Tokenizer> make_bpe_tokenizer(const std::string & json_path, const SpecialNames & names);
std::shared_ptr<Tokenizer> make_sp_tokenizer(const std::string & model_path, const SpecialNames & names);

// Decodes one code point at s[i] of valid UTF-8; returns its byte length.
inline int utf8_len(unsigned char c) { return c < 0x80 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4; }

}  // namespace idamoe::data::detail
