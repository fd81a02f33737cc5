// defines: apply_template, tokenize_with_images, expand_image_tokens, generation_prompt
#include "data/templates.h"

namespace idamoe::data {

namespace {

// PKU-YuanGroup/MoE-LLaVA moellava/conversation.py conv_stablelm / conv_phi (SeparatorStyle.TWO).
const char * kMoeLlavaSystem =
    "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
    "detailed, and polite answers to the user's questions.";
const char * kSep = " ";
const char * kSep2 = "<|endoftext|>";
// Qwen2 chat template's default system message (architectures.md §4.5).
const char * kChatmlSystem = "You are a helpful assistant.";

std::vector<std::string> split_all(const std::string & s, const std::string & sep) {
    std::vector<std::string> out;
    size_t b = 0;
    for (size_t p; (p = s.find(sep, b)) != std::string::npos; b = p + sep.size()) out.push_back(s.substr(b, p - b));
    out.push_back(s.substr(b));
    return out;
}

void require_special(const Tokenizer & tok, const std::string & s, const std::string & tmpl) {
    if (!tok.special_id(s))
        throw TemplateError("template " + tmpl + " needs the special token " + s + ", which " + tok.describe() +
                            " does not have");
}

// MoE-LLaVA preprocess_phi step 1: drop a leading non-human turn, then roles must alternate.
std::vector<Turn> alternating(const std::vector<Turn> & turns) {
    std::vector<Turn> t(turns);
    if (!t.empty() && t[0].from != "human") t.erase(t.begin());
    for (size_t i = 0; i < t.size(); ++i) {
        const char * want = i % 2 == 0 ? "human" : "gpt";
        if (t[i].from != want)
            throw TemplateError("turn " + std::to_string(i) + " is from '" + t[i].from + "', expected '" + want +
                                "' (conversations must alternate human/gpt)");
    }
    if (t.empty()) throw TemplateError("conversation has no turns");
    return t;
}

TemplateResult plain(const Tokenizer & tok, const std::vector<Turn> & turns) {
    // moellava/train/train.py preprocess_plain: 2 turns, <image> in the first; the question is discarded.
    if (turns.size() != 2) throw TemplateError("plain template needs exactly 2 turns, got " + std::to_string(turns.size()));
    if (turns[0].value.find(kImageTag) == std::string::npos) throw TemplateError("plain template needs <image> in the first turn");
    TemplateResult r;
    r.text = std::string(kImageTag) + turns[1].value + "\n";
    r.input_ids = tokenize_with_images(tok, r.text);
    r.labels = r.input_ids;
    size_t masked = tokenize_with_images(tok, kImageTag).size();
    for (size_t i = 0; i < masked && i < r.labels.size(); ++i) r.labels[i] = kIgnoreIndex;
    return r;
}

TemplateResult moe_llava(const Tokenizer & tok, const std::vector<Turn> & turns_in) {
    require_special(tok, kSep2, "moe_llava");
    auto turns = alternating(turns_in);
    TemplateResult r;
    r.text = std::string(kMoeLlavaSystem) + kSep;
    for (size_t i = 0; i < turns.size(); ++i) {
        const char * role = i % 2 == 0 ? "USER" : "ASSISTANT";
        if (turns[i].value.empty()) r.text += std::string(role) + ":";  // get_prompt renders None/"" like this
        else r.text += std::string(role) + ": " + turns[i].value + (i % 2 == 0 ? kSep : kSep2);
    }
    r.input_ids = tokenize_with_images(tok, r.text);
    r.labels = r.input_ids;
    const int64_t total_len = static_cast<int64_t>(r.input_ids.size());
    const int64_t n = total_len;

    int64_t cur_len = 0;  // no BOS for Qwen / StableLM
    for (const std::string & rou : split_all(r.text, kSep2)) {
        if (rou.empty()) break;
        auto parts = split_all(rou, " ASSISTANT: ");
        if (parts.size() != 2) break;
        parts[0] += " ASSISTANT: ";
        // +1: the <|endoftext|> that split() removed. -1: in context, the space after "ASSISTANT:"
        // merges into the first answer token, so the standalone instruction is one token longer.
        int64_t round_len = static_cast<int64_t>(tokenize_with_images(tok, rou).size()) + 1;
        int64_t instruction_len = static_cast<int64_t>(tokenize_with_images(tok, parts[0]).size()) - 1;
        for (int64_t k = cur_len; k < std::min(n, cur_len + instruction_len); ++k) r.labels[k] = kIgnoreIndex;
        cur_len += round_len;
    }
    for (int64_t k = std::max<int64_t>(0, cur_len); k < n; ++k) r.labels[k] = kIgnoreIndex;
    if (cur_len != total_len) {
        r.mismatch = true;
        r.mismatch_reason = "tokenization mismatch: " + std::to_string(cur_len) + " vs. " + std::to_string(total_len);
        std::fill(r.labels.begin(), r.labels.end(), kIgnoreIndex);
    }
    return r;
}

TemplateResult chatml(const Tokenizer & tok, const std::vector<Turn> & turns_in) {
    require_special(tok, "<|im_start|>", "chatml");
    require_special(tok, "<|im_end|>", "chatml");
    auto turns = alternating(turns_in);
    TemplateResult r;
    auto add = [&](const std::string & s, bool trained) {
        r.text += s;
        auto ids = tokenize_with_images(tok, s);
        r.input_ids.insert(r.input_ids.end(), ids.begin(), ids.end());
        for (int64_t id : ids) r.labels.push_back(trained ? id : kIgnoreIndex);
    };
    add(std::string("<|im_start|>system\n") + kChatmlSystem + "<|im_end|>\n", false);
    for (size_t i = 0; i < turns.size(); ++i) {
        if (i % 2 == 0) {
            add("<|im_start|>user\n" + turns[i].value + "<|im_end|>\n", false);
        } else {
            add("<|im_start|>assistant\n", false);
            add(turns[i].value + "<|im_end|>", true);
            add("\n", false);
        }
    }
    auto joint = tokenize_with_images(tok, r.text);
    if (joint != r.input_ids) {
        size_t k = 0;
        while (k < joint.size() && k < r.input_ids.size() && joint[k] == r.input_ids[k]) ++k;
        r.mismatch = true;
        r.mismatch_reason = "tokenization mismatch: segment-wise tokenization differs from the whole text at token " +
                            std::to_string(k) + " (" + std::to_string(r.input_ids.size()) + " vs. " +
                            std::to_string(joint.size()) + " tokens)";
        std::fill(r.labels.begin(), r.labels.end(), kIgnoreIndex);
    }
    return r;
}

}  // namespace

void check_template_name(const std::string & name) {
    if (name != "plain" && name != "moe_llava" && name != "chatml")
        throw TemplateError("unknown template '" + name + "' (plain | moe_llava | chatml)");
}

TemplateResult apply_template(const std::string & name, const Tokenizer & tok, const std::vector<Turn> & turns) {
    check_template_name(name);
    if (name == "plain") return plain(tok, turns);
    if (name == "moe_llava") return moe_llava(tok, turns);
    return chatml(tok, turns);
}

std::vector<int64_t> tokenize_with_images(const Tokenizer & tok, const std::string & text) {
    std::vector<int64_t> ids;
    auto chunks = split_all(text, kImageTag);
    for (size_t i = 0; i < chunks.size(); ++i) {
        if (i > 0) ids.push_back(kImageTokenId);
        if (!chunks[i].empty()) {
            auto c = tok.encode(chunks[i]);
            ids.insert(ids.end(), c.begin(), c.end());
        }
    }
    return ids;
}

void expand_image_tokens(std::vector<int64_t> & ids, std::vector<int64_t> & labels, int64_t n) {
    if (n == 1) return;
    std::vector<int64_t> oi, ol;
    oi.reserve(ids.size() + 1024);
    ol.reserve(ids.size() + 1024);
    for (size_t i = 0; i < ids.size(); ++i) {
        if (ids[i] == kImageTokenId) {
            oi.insert(oi.end(), n, kImageTokenId);
            ol.insert(ol.end(), n, kIgnoreIndex);
        } else {
            oi.push_back(ids[i]);
            ol.push_back(labels[i]);
        }
    }
    ids.swap(oi);
    labels.swap(ol);
}

std::string generation_prompt(const std::string & name, const std::string & question) {
    check_template_name(name);
    if (name == "moe_llava") return std::string(kMoeLlavaSystem) + kSep + "USER: " + question + kSep + "ASSISTANT:";
    if (name == "chatml")
        return std::string("<|im_start|>system\n") + kChatmlSystem + "<|im_end|>\n<|im_start|>user\n" + question +
               "<|im_end|>\n<|im_start|>assistant\n";
    return question;
}

}  // namespace idamoe::data
