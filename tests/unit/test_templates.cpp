// Conversation templates: exact token / label layouts of a two-turn conversation with the Qwen2
// tokenizer fixture. Layouts are written as "piece|piece|..." where each piece is one token decoded
// alone, "+" marks a trained token (label == input id) and <IMG> is the -200 placeholder.
// The expected strings were checked by hand against the rules in moe_llava_protocol.md §1.3 / §2.1-2.2.
#include "data/templates.h"
#include "test_utils.h"

#include <catch2/catch.hpp>

using namespace idamoe::data;
using idamoe::test::fixture_path;

namespace {

std::shared_ptr<Tokenizer> qwen2() {
    static std::shared_ptr<Tokenizer> tok = load_tokenizer(fixture_path("tokenizer/qwen2"));
    return tok;
}

std::string layout(const TemplateResult & r, const Tokenizer & tok) {
    REQUIRE(r.input_ids.size() == r.labels.size());
    std::string s;
    for (size_t i = 0; i < r.input_ids.size(); ++i) {
        if (i) s += "|";
        int64_t id = r.input_ids[i];
        if (r.labels[i] != kIgnoreIndex) {
            REQUIRE(r.labels[i] == id);
            s += "+";
        }
        s += id == kImageTokenId ? "<IMG>" : tok.decode({id});
    }
    return s;
}

const std::vector<Turn> kTwoTurns = {
    {"human", "<image>\nWhat is in the photo?"},
    {"gpt", "A dog on a beach."},
    {"human", "What colour is it?"},
    {"gpt", "Brown."},
};

}  // namespace

TEST_CASE("templates: plain = <image> + caption + newline, only the image masked", "[data][templates]") {
    auto tok = qwen2();
    auto r = apply_template("plain", *tok, {{"human", "<image>\nDescribe it."}, {"gpt", "A dog on a beach."}});
    CHECK(r.text == "<image>A dog on a beach.\n");
    CHECK(layout(r, *tok) == "<IMG>|+A|+ dog|+ on|+ a|+ beach|+.\n");
    CHECK_FALSE(r.mismatch);
    CHECK_THROWS_AS(apply_template("plain", *tok, kTwoTurns), TemplateError);
    CHECK_THROWS_AS(apply_template("plain", *tok, {{"human", "no tag"}, {"gpt", "x"}}), TemplateError);
}

TEST_CASE("templates: moe_llava two-turn layout follows MoE-LLaVA's preprocess_phi", "[data][templates]") {
    auto tok = qwen2();
    auto r = apply_template("moe_llava", *tok, kTwoTurns);
    CHECK(r.text ==
          "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
          "detailed, and polite answers to the user's questions. USER: <image>\nWhat is in the photo? ASSISTANT: "
          "A dog on a beach.<|endoftext|>USER: What colour is it? ASSISTANT: Brown.<|endoftext|>");
    CHECK(layout(r, *tok) ==
          "A| chat| between| a| curious| user| and| an| artificial| intelligence| assistant|.| The| assistant| gives|"
          " helpful|,| detailed|,| and| polite| answers| to| the| user|'s| questions|.| USER|:| |<IMG>|\n|What| is| in|"
          " the| photo|?| ASS|IST|ANT|:|+ A|+ dog|+ on|+ a|+ beach|+.|+<|endoftext|>|USER|:| What| colour| is| it|?|"
          " ASS|IST|ANT|:|+ Brown|+.|+<|endoftext|>");
    // tokenize_with_images tokenizes the text before <image> alone, so its trailing space stays a
    // separate token (as in LLaVA); the first answer token carries the space after "ASSISTANT:".
    CHECK_FALSE(r.mismatch);
}

TEST_CASE("templates: chatml two-turn layout trains answers and their <|im_end|>", "[data][templates]") {
    auto tok = qwen2();
    auto r = apply_template("chatml", *tok, kTwoTurns);
    CHECK(r.text ==
          "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n<image>\nWhat is in the "
          "photo?<|im_end|>\n<|im_start|>assistant\nA dog on a beach.<|im_end|>\n<|im_start|>user\nWhat colour is "
          "it?<|im_end|>\n<|im_start|>assistant\nBrown.<|im_end|>\n");
    CHECK(layout(r, *tok) ==
          "<|im_start|>|system|\n|You| are| a| helpful| assistant|.|<|im_end|>|\n|<|im_start|>|user|\n|<IMG>|\n|What|"
          " is| in| the| photo|?|<|im_end|>|\n|<|im_start|>|assistant|\n|+A|+ dog|+ on|+ a|+ beach|+.|+<|im_end|>|\n|"
          "<|im_start|>|user|\n|What| colour| is| it|?|<|im_end|>|\n|<|im_start|>|assistant|\n|+Brown|+.|+<|im_end|>|\n");
    CHECK_FALSE(r.mismatch);
}

TEST_CASE("templates: tokenization mismatch is flagged, fully masked and explained", "[data][templates]") {
    auto tok = qwen2();
    // The literal text " ASSISTANT: " inside a user turn makes MoE-LLaVA's split() find 3 parts: the
    // round loop stops early, cur_len != total_len.
    auto r = apply_template("moe_llava", *tok, {{"human", "Say ASSISTANT: hi"}, {"gpt", "ok"}});
    CHECK(r.mismatch);
    CHECK(r.mismatch_reason.find("tokenization mismatch") != std::string::npos);
    for (int64_t l : r.labels) CHECK(l == kIgnoreIndex);
    // chatml: an answer that starts with a newline tokenizes differently on its own ("\n\n" merges).
    auto c = apply_template("chatml", *tok, {{"human", "q"}, {"gpt", "\nanswer"}});
    CHECK(c.mismatch);
}

TEST_CASE("templates: role checks, leading non-human turn dropped, image expansion", "[data][templates]") {
    auto tok = qwen2();
    CHECK_THROWS_AS(apply_template("moe_llava", *tok, {{"human", "a"}, {"human", "b"}}), TemplateError);
    CHECK_THROWS_AS(apply_template("nope", *tok, kTwoTurns), TemplateError);
    auto r = apply_template("moe_llava", *tok, {{"gpt", "stray"}, {"human", "hi"}, {"gpt", "yo"}});
    CHECK(r.text.find("stray") == std::string::npos);
    std::vector<int64_t> ids = {5, kImageTokenId, 6}, labels = {kIgnoreIndex, kIgnoreIndex, 6};
    expand_image_tokens(ids, labels, 4);
    CHECK(ids == std::vector<int64_t>{5, -200, -200, -200, -200, 6});
    CHECK(labels == std::vector<int64_t>{-100, -100, -100, -100, -100, 6});
    CHECK(generation_prompt("moe_llava", "<image>\nWhat?").substr(0, 7) == "A chat ");
    std::string g = generation_prompt("moe_llava", "q");
    CHECK(g.substr(g.size() - 13) == " q ASSISTANT:");
}
