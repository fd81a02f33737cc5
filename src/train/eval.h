// defines: EvalQuestion, EvalAnswer, CategoryScore, AnswerFn, load_eval_questions, normalize_answer,
//          eval_prompt, run_eval, score_answers, write_answers_jsonl, write_scores_json, routing_record
//
// Model-agnostic VQA evaluation in LLaVA's file formats (moe_llava_protocol.md §6): questions JSONL
// {question_id, image, text, category, answer} in, answers JSONL {question_id, prompt, text,
// answer_id, model_id, metadata} out, exact-match accuracy per category after LLaVA-style
// normalisation. The model enters only through AnswerFn (greedy generation on one prompt + image),
// so the scoring and file handling are tested without a model.
#pragma once

#include <torch/torch.h>

#include <nlohmann/json.hpp>

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

namespace idamoe::train {

struct EvalQuestion {
    int64_t question_id = 0;
    std::string image;     // relative to the image root; "" = text-only
    std::string text;      // the question, as LLaVA's files carry it (prompt suffix included)
    std::string category;  // "" when the file has none
    std::string answer;    // ground truth; "" when the file has none (then nothing is scored)
};

struct EvalAnswer {
    int64_t question_id = 0;
    std::string prompt;    // the full prompt given to the model
    std::string text;      // the model's answer, special tokens and surrounding space stripped
    std::string category;
    std::string answer;    // ground truth copied from the question
};

struct CategoryScore {
    int64_t correct = 0, total = 0;
    double accuracy() const { return total ? static_cast<double>(correct) / static_cast<double>(total) : 0.0; }
};

// (prompt, image path or "") -> generated text.
using AnswerFn = std::function<std::string(const std::string & prompt, const std::string & image_path)>;

// Throws std::runtime_error naming file:line for malformed lines or missing question_id / text.
std::vector<EvalQuestion> load_eval_questions(const std::string & jsonl_path);

// LLaVA's short-answer normalisation (scripts/convert_gqa_for_eval.py): first line, trimmed,
// lower-case, trailing '.' removed; a trailing <|endoftext|> / <|im_end|> is dropped first.
std::string normalize_answer(const std::string & s);

// The inference prompt: "<image>\n" + question as the first user turn (LLaVA model_vqa_loader), or
// the question as written where it places <image> itself; rendered by the template's generation prompt
// (data::generation_prompt).
std::string eval_prompt(const std::string & template_name, const EvalQuestion & q);

// Runs fn on each question (the first `limit` when limit > 0), in file order.
std::vector<EvalAnswer> run_eval(const std::vector<EvalQuestion> & questions, const std::string & template_name,
                                 const std::string & image_root, const AnswerFn & fn, int64_t limit = 0);

// Per category, plus "all"; questions without a ground-truth answer are not scored.
std::map<std::string, CategoryScore> score_answers(const std::vector<EvalAnswer> & answers);

void write_answers_jsonl(const std::string & path, const std::vector<EvalAnswer> & answers, const std::string & model_id);
void write_scores_json(const std::string & path, const std::map<std::string, CategoryScore> & scores);

// One line of the routing dump scripts/plot_demo.py reads: {"question_id", "layer", "probs": [[E] x T]}.
nlohmann::json routing_record(int64_t question_id, int64_t layer, const torch::Tensor & probs_TE,
                              const std::vector<std::string> & tokens = {});

}  // namespace idamoe::train
