// Model-agnostic VQA evaluation: LLaVA question/answer JSONL, normalised exact-match scoring.
#include "train/eval.h"

#include "data/templates.h"

#include <algorithm>
#include <cctype>
#include <filesystem>
#include <fstream>
#include <stdexcept>

namespace idamoe::train {

namespace fs = std::filesystem;
using json = nlohmann::json;

std::vector<EvalQuestion> load_eval_questions(const std::string & path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw std::runtime_error(path + ": cannot read the evaluation questions");
    std::vector<EvalQuestion> out;
    int64_t line_no = 0;
    for (std::string line; std::getline(in, line);) {
        ++line_no;
        if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
        const std::string at = path + ":" + std::to_string(line_no);
        json j;
        try {
            j = json::parse(line);
        } catch (const json::exception & e) {
            throw std::runtime_error(at + ": not valid JSON (" + e.what() + ")");
        }
        if (!j.is_object() || !j.contains("question_id") || !j.contains("text") || !j["text"].is_string())
            throw std::runtime_error(at + ": expected an object with question_id and text (LLaVA question JSONL)");
        EvalQuestion q;
        if (j["question_id"].is_number_integer()) q.question_id = j["question_id"].get<int64_t>();
        else if (j["question_id"].is_string()) q.question_id = std::stoll(j["question_id"].get<std::string>());
        else throw std::runtime_error(at + ": question_id must be an integer");
        q.text = j["text"].get<std::string>();
        q.image = j.value("image", "");
        q.category = j.value("category", "");
        if (j.contains("answer") && j["answer"].is_string()) q.answer = j["answer"].get<std::string>();
        out.push_back(std::move(q));
    }
    return out;
}

std::string normalize_answer(const std::string & s) {
    std::string a = s;
    for (const char * stop : {"<|endoftext|>", "<|im_end|>"}) {
        auto p = a.find(stop);
        if (p != std::string::npos) a = a.substr(0, p);
    }
    auto nl = a.find('\n');
    if (nl != std::string::npos && a.find_first_not_of(" \t\r\n") < nl) a = a.substr(0, nl);
    auto b = a.find_first_not_of(" \t\r\n");
    auto e = a.find_last_not_of(" \t\r\n");
    a = b == std::string::npos ? "" : a.substr(b, e - b + 1);
    std::transform(a.begin(), a.end(), a.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
    while (!a.empty() && a.back() == '.') a.pop_back();
    return a;
}

std::string eval_prompt(const std::string & template_name, const EvalQuestion & q) {
    // LLaVA's model_vqa puts the image first; a question that places <image> itself keeps its place.
    const bool placed = q.text.find(data::kImageTag) != std::string::npos;
    const std::string question = q.image.empty() || placed ? q.text : std::string(data::kImageTag) + "\n" + q.text;
    return data::generation_prompt(template_name, question);
}

std::vector<EvalAnswer> run_eval(const std::vector<EvalQuestion> & questions, const std::string & template_name,
                                 const std::string & image_root, const AnswerFn & fn, int64_t limit) {
    std::vector<EvalAnswer> out;
    const size_t n = limit > 0 ? std::min(questions.size(), static_cast<size_t>(limit)) : questions.size();
    for (size_t i = 0; i < n; ++i) {
        const auto & q = questions[i];
        EvalAnswer a;
        a.question_id = q.question_id;
        a.prompt = eval_prompt(template_name, q);
        const std::string image = q.image.empty() ? "" : (fs::path(image_root) / q.image).string();
        std::string text = fn(a.prompt, image);
        for (const char * stop : {"<|endoftext|>", "<|im_end|>"}) {  // stripped like LLaVA's decode
            auto p = text.find(stop);
            if (p != std::string::npos) text = text.substr(0, p);
        }
        auto b = text.find_first_not_of(" \t\r\n");
        auto e = text.find_last_not_of(" \t\r\n");
        a.text = b == std::string::npos ? "" : text.substr(b, e - b + 1);
        a.category = q.category;
        a.answer = q.answer;
        out.push_back(std::move(a));
    }
    return out;
}

std::map<std::string, CategoryScore> score_answers(const std::vector<EvalAnswer> & answers) {
    std::map<std::string, CategoryScore> s;
    for (const auto & a : answers) {
        if (a.answer.empty()) continue;
        const bool ok = normalize_answer(a.text) == normalize_answer(a.answer);
        for (const std::string & c : {a.category.empty() ? std::string("uncategorised") : a.category, std::string("all")}) {
            s[c].correct += ok;
            s[c].total += 1;
        }
    }
    return s;
}

void write_answers_jsonl(const std::string & path, const std::vector<EvalAnswer> & answers, const std::string & model_id) {
    std::ofstream out(path, std::ios::binary);
    if (!out) throw std::runtime_error(path + ": cannot write answers");
    for (const auto & a : answers) {
        json j = {{"question_id", a.question_id}, {"prompt", a.prompt}, {"text", a.text},
                  {"answer_id", "q" + std::to_string(a.question_id)}, {"model_id", model_id},
                  {"category", a.category}, {"answer", a.answer}, {"metadata", json::object()}};
        out << j.dump() << "\n";
    }
    if (!out) throw std::runtime_error(path + ": write failed");
}

void write_scores_json(const std::string & path, const std::map<std::string, CategoryScore> & scores) {
    json j = json::object();
    for (const auto & [c, s] : scores) j[c] = {{"correct", s.correct}, {"total", s.total}, {"accuracy", s.accuracy()}};
    std::ofstream out(path, std::ios::binary);
    out << j.dump(2) << "\n";
    if (!out) throw std::runtime_error(path + ": cannot write scores");
}

json routing_record(int64_t question_id, int64_t layer, const torch::Tensor & probs_TE, const std::vector<std::string> & tokens) {
    TORCH_CHECK(probs_TE.dim() == 2, "routing_record: probs must be [T, E], got ", probs_TE.sizes());
    TORCH_CHECK(tokens.empty() || static_cast<int64_t>(tokens.size()) == probs_TE.size(0),
                "routing_record: ", tokens.size(), " token strings for ", probs_TE.size(0), " rows");
    auto p = probs_TE.detach().to(torch::kCPU, torch::kFloat32).contiguous();
    auto acc = p.accessor<float, 2>();
    json rows = json::array();
    for (int64_t t = 0; t < p.size(0); ++t) {
        json row = json::array();
        for (int64_t e = 0; e < p.size(1); ++e) row.push_back(acc[t][e]);
        rows.push_back(std::move(row));
    }
    json j = {{"question_id", question_id}, {"layer", layer}, {"probs", std::move(rows)}};
    if (!tokens.empty()) j["tokens"] = tokens;
    return j;
}

}  // namespace idamoe::train
