// defines: kImageTokenId, kIgnoreIndex, Turn, TemplateResult, TemplateError, apply_template,
//          tokenize_with_images, expand_image_tokens, generation_prompt
//
// Conversation templates and label masking (moe_llava_protocol.md §1.3, §2.1-2.3):
//   plain     (stage 1)  "<image>" + caption + "\n"; the human turn is dropped; only <image> is masked.
//   moe_llava (stages 2-3, MoE-LLaVA conv_stablelm / conv_phi("qwen")):
//             system + " " + "USER: q ASSISTANT: a<|endoftext|>USER: ..."; labels follow MoE-LLaVA's
//             preprocess_phi arithmetic exactly (round_len = |tok(round)| + 1, instruction_len =
//             |tok(instruction + " ASSISTANT: ")| - 1), including its tokenization-mismatch check.
//   chatml    "<|im_start|>role\n...<|im_end|>\n" with Qwen2's default system message; trained =
//             assistant content + its <|im_end|>.
// Every <image> is one kImageTokenId here (as in LLaVA's tokenizer_image_token); the dataset expands it
// to the vision tower's N tokens with expand_image_tokens.
#pragma once

#include "data/tokenizer.h"

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace idamoe::data {

constexpr int64_t kImageTokenId = -200;  // LLaVA IMAGE_TOKEN_INDEX
constexpr int64_t kIgnoreIndex = -100;   // LLaVA IGNORE_INDEX (torch cross_entropy ignore_index)
inline const char * kImageTag = "<image>";

struct TemplateError : std::runtime_error {
    using std::runtime_error::runtime_error;
};

struct Turn {
    std::string from;   // "human" | "gpt"
    std::string value;
};

struct TemplateResult {
    std::string text;                 // the rendered conversation
    std::vector<int64_t> input_ids;   // one kImageTokenId per <image>
    std::vector<int64_t> labels;      // kIgnoreIndex where not trained
    // MoE-LLaVA's check: the length the masking arithmetic walked differs from the tokenized length
    // (chatml: segment-wise tokenization differs from tokenizing the whole text). Such a sample is
    // fully masked, as in MoE-LLaVA, and the caller must report it (mismatch_reason says why).
    bool mismatch = false;
    std::string mismatch_reason;
};

// Known names: plain, moe_llava, chatml. Throws TemplateError for an unknown name, for turns the
// template cannot render (plain: not exactly human+gpt with <image>; others: roles not alternating
// human/gpt after an optional leading non-human turn), and when the tokenizer lacks a token the
// template needs (<|endoftext|>, <|im_start|>, <|im_end|>).
TemplateResult apply_template(const std::string & name, const Tokenizer & tok, const std::vector<Turn> & turns);
void check_template_name(const std::string & name);

// LLaVA tokenizer_image_token: split at "<image>", tokenize each chunk alone, join with kImageTokenId.
std::vector<int64_t> tokenize_with_images(const Tokenizer & tok, const std::string & text);

// Replaces each kImageTokenId in ids by n copies (labels there: kIgnoreIndex).
void expand_image_tokens(std::vector<int64_t> & ids, std::vector<int64_t> & labels, int64_t n);

// The inference prompt for one question (eval / demo): moe_llava "<system> USER: {q} ASSISTANT:",
// chatml "...<|im_start|>assistant\n", plain "{q}".
std::string generation_prompt(const std::string & name, const std::string & question);

}  // namespace idamoe::data
