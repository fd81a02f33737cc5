#include "train/eval_model.h"

#include "data/images.h"
#include "data/templates.h"
#include "data/tokenizer.h"
#include "model/generate.h"
#include "train/export.h"
#include "train/trainer.h"

#include <spdlog/spdlog.h>

#include <filesystem>
#include <fstream>

namespace fs = std::filesystem;

namespace idamoe::train {

std::map<std::string, CategoryScore> run_model_eval(const core::Config & cfg, const EvalRunOptions & opt) {
    const std::string dir = resolve_init_dir(opt.checkpoint);
    const bool has_tokenizer = fs::exists(fs::path(dir) / "tokenizer.json") || fs::exists(fs::path(dir) / "tokenizer.model");
    if (!has_tokenizer)
        throw std::runtime_error(dir + ": no tokenizer.json or tokenizer.model in this model directory (eval needs one)");
    auto tok = data::load_tokenizer(dir);
    auto questions = load_eval_questions(opt.questions);
    if (!opt.image_root.empty() && !fs::is_directory(opt.image_root))
        throw std::runtime_error(opt.image_root + ": image root is not a directory");
    for (const auto & q : questions) {
        if (q.image.empty()) continue;
        fs::path p = fs::path(opt.image_root) / q.image;
        if (!fs::exists(p))
            throw std::runtime_error(opt.questions + ": question " + std::to_string(q.question_id) + ": image " + p.string() +
                                     " does not exist");
    }

    torch::NoGradGuard no_grad;
    StageModel sm = load_stage_export(dir, cfg);
    sm.llava->eval();
    const int64_t n_img = sm.llava->num_image_tokens();
    data::ImageProcessorConfig proc;
    if (sm.llava->has_vision())
        proc = data::ImageProcessorConfig::from_dir(cfg.vision.path, cfg.vision.image_aspect_ratio == "pad");
    spdlog::info("eval: {} questions from {}, model {} (stage {}), {} image tokens", questions.size(), opt.questions, dir,
                 sm.from_stage, n_img);

    fs::create_directories(opt.out_dir);
    std::ofstream routing(fs::path(opt.out_dir) / "routing.jsonl");
    int64_t answered = 0;
    const int64_t eos = tok->eos_id();
    AnswerFn fn = [&](const std::string & prompt, const std::string & image_path) -> std::string {
        std::vector<int64_t> ids = data::tokenize_with_images(*tok, prompt);
        std::vector<int64_t> labels(ids.size(), data::kIgnoreIndex);
        torch::Tensor images;
        if (!image_path.empty() && sm.llava->has_vision()) {
            data::expand_image_tokens(ids, labels, n_img);
            images = data::preprocess_image(data::decode_image_file(image_path), proc).unsqueeze(0);
        } else {
            // A text-only question (or a text-only model): drop the tag rather than feed placeholders.
            ids.erase(std::remove(ids.begin(), ids.end(), data::kImageTokenId), ids.end());
        }
        torch::Tensor ids_BT = torch::tensor(ids, torch::kLong).unsqueeze(0);
        torch::Tensor mask_BT = torch::ones_like(ids_BT);
        torch::Tensor embeds_BTD = sm.llava->prepare_embeds(ids_BT, images);
        auto gen = model::greedy_generate_embeds(sm.llava->llm(), embeds_BTD, mask_BT, opt.max_new_tokens, eos);
        std::vector<int64_t> out;
        for (int64_t i = 0; i < gen.ids_BN.size(1); ++i) {
            if (gen.mask_BN[0][i].item<int64_t>() == 0) break;
            int64_t id = gen.ids_BN[0][i].item<int64_t>();
            if (id == eos) break;
            out.push_back(id);
        }
        // Routing of the prompt (+ answer) for the heatmap: one more forward over the full sequence.
        if (answered < opt.routing_samples && !sm.moe_layers.empty()) {
            std::vector<int64_t> full = ids;
            full.insert(full.end(), out.begin(), out.end());
            torch::Tensor f_BT = torch::tensor(full, torch::kLong).unsqueeze(0);
            (void)sm.llava->forward(f_BT, torch::ones_like(f_BT), images);
            for (int64_t layer : sm.moe_layers) {
                const model::FfnAux * aux = sm.llava->llm()->ffn(layer)->aux();
                if (!aux || !aux->topk_idx_TK.defined()) continue;
                // The router's full distribution over experts (what IDA-MoE Fig. 3 and the Fig. 6 entropy
                // show); routers that give none fall back to their top-k gates.
                torch::Tensor probs_TE = aux->probs_TN.defined() ? aux->probs_TN.to(torch::kFloat).cpu() : torch::Tensor();
                if (!probs_TE.defined()) {
                    const int64_t E = aux->counts_E.size(0);
                    probs_TE = torch::zeros({aux->topk_idx_TK.size(0), E});
                    torch::Tensor g = aux->topk_gates_TK.defined() ? aux->topk_gates_TK.to(torch::kFloat)
                                                                    : torch::ones(aux->topk_idx_TK.sizes());
                    probs_TE.scatter_(1, aux->topk_idx_TK.to(torch::kLong), g);
                }
                auto rec = routing_record(questions[answered].question_id, layer, probs_TE);
                routing << rec.dump() << "\n";
            }
        }
        ++answered;
        return tok->decode(out);
    };
    auto answers = run_eval(questions, cfg.data.template_name, opt.image_root, fn, opt.limit);
    std::string model_id = opt.model_id.empty() ? fs::path(opt.checkpoint).filename().string() : opt.model_id;
    write_answers_jsonl((fs::path(opt.out_dir) / "answers.jsonl").string(), answers, model_id);
    auto scores = score_answers(answers);
    write_scores_json((fs::path(opt.out_dir) / "scores.json").string(), scores);
    return scores;
}

}  // namespace idamoe::train
