// gen-shapes-dataset: writes the built-in demo's data set (shapes_world.h), deterministic by seed.
//
//   gen-shapes-dataset --out runs/demo/data [--seed 1] [--image-size 56]
//                      [--n-caption 2000] [--n-instruct 3000] [--n-text 300] [--n-eval 300]
//                      [--grid G --n-tower N]
//
// Output (image paths in the JSON files are relative to OUT/images):
//   images/{caption,instruct,eval}/NNNNNN.png
//   captions.json        stage 1, LLaVA-558k style: human "<image>", gpt caption (plain template)
//   instruct_image.json  stages 2-3, LLaVA-665k style: 1..--max-turns QA turns per image, "<image>\n" leads turn 1
//   presence_first.json  every presence turn of instruct_image.json as a single-turn record on its image
//                        (the demo's stage-2 data.curriculum phase)
//   instruct_text.json   stages 2-3, text-only records (no "image" key; MoE-LLaVA's nlp_tune.json)
//   eval_questions.jsonl LLaVA question JSONL: {question_id, image, text, category, answer, objects:
//                        [{shape, colour, size, side}]} (objects: what the image holds, for analysis)
//   corpus.txt           every training text, one record a line, for training the tokenizer
//   dataset_info.json    arguments, counts per category
//   images/tower/NNNNNN.png, tower_labels.jsonl (only with --n-tower N > 0, grid layouts): one line per
//                        image, {image, grid, objects: [{shape, colour, size, side, cell: [column, row]}]}, the
//                        labelled images make-tiny-models --pretrain-tower trains the demo's tower on
#include "shapes_world.h"

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#define STB_IMAGE_WRITE_STATIC
#define STB_IMAGE_WRITE_IMPLEMENTATION
#include <stb/stb_image_write.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <stdexcept>

namespace fs = std::filesystem;
using idamoe::demo::Rng;
using json = nlohmann::ordered_json;

namespace {

// Split ids for stream_seed: every split draws from its own streams.
enum Split : uint64_t { kCaption = 1, kInstruct = 2, kText = 3, kEval = 4, kTower = 5 };

// LLaVA-1.5's short-answer instruction (haotian-liu/LLaVA docs/Evaluation.md; also in the 665k mix).
const char * kShortAnswer = "Answer the question using a single word or phrase.";

// MoE-LLaVA's system prompt (moellava/conversation.py conv_stablelm / conv_phi), so the tokenizer
// learns the words the moe_llava template wraps every sample in.
const char * kSystem =
    "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
    "detailed, and polite answers to the user's questions.";

std::string image_name(size_t i) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%06zu.png", i);
    return buf;
}

void write_png(const fs::path & path, const std::vector<uint8_t> & rgb, int size) {
    if (!stbi_write_png(path.string().c_str(), size, size, 3, rgb.data(), size * 3))
        throw std::runtime_error(path.string() + ": stbi_write_png failed (disk full or unwritable?)");
}

void write_text(const fs::path & path, const std::string & text) {
    std::ofstream out(path, std::ios::binary);
    out << text;
    if (!out) throw std::runtime_error(path.string() + ": cannot write");
}

struct Args {
    std::string out;
    uint64_t seed = 1;
    int image_size = 56;
    size_t n_caption = 2000, n_instruct = 3000, n_text = 300, n_eval = 300, n_tower = 0;
    int max_turns = 3;
    int grid = 0;
    double one_shape = -1.0;
};

// The same conversation as the moe_llava template renders it (what the tokenizer must cover).
std::string moe_llava_render(const json & convs) {
    std::string s = std::string(kSystem) + " ";
    for (const auto & turn : convs) {
        std::string v = turn["value"].get<std::string>();
        if (v.rfind("<image>\n", 0) == 0) v = v.substr(8);
        if (v == "<image>") v.clear();
        s += turn["from"] == "human" ? "USER: " + v + " " : "ASSISTANT: " + v + "<|endoftext|>";
    }
    return s;
}

// What a scene holds, for labels and analysis: shape, colour, size class and side of each object.
json objects_json(const idamoe::demo::Scene & scene) {
    json objs = json::array();
    for (const auto & sh : scene.shapes)
        objs.push_back({{"shape", idamoe::demo::kShapeNames[sh.kind]},
                        {"colour", idamoe::demo::kColours[sh.colour].name},
                        {"size", idamoe::demo::kSizeNames[sh.size]},
                        {"side", idamoe::demo::horizontal(scene, sh)}});
    return objs;
}

}  // namespace

int main(int argc, char ** argv) {
    CLI::App app{"gen-shapes-dataset: the demo's synthetic LLaVA-format data (shapes, captions, VQA, eval split)"};
    Args a;
    app.add_option("--out", a.out, "Output directory")->required();
    app.add_option("--seed", a.seed, "Seed; the same seed gives byte-identical output");
    app.add_option("--image-size", a.image_size, "Square image side in pixels (match the vision tower)")->check(CLI::Range(16, 1024));
    app.add_option("--n-caption", a.n_caption, "Stage-1 caption records (one image each)");
    app.add_option("--n-instruct", a.n_instruct, "Stage-2/3 image instruction records (one image each)");
    app.add_option("--n-text", a.n_text, "Stage-2/3 text-only instruction records");
    app.add_option("--n-eval", a.n_eval, "Held-out evaluation questions (one image each)");
    app.add_option("--max-turns", a.max_turns, "Most QA turns per instruction record")->check(CLI::Range(1, 6));
    app.add_option("--grid", a.grid, "0: shapes anywhere; G > 0: one shape per cell of a G x G grid (the demo: image side / patch)")->check(CLI::Range(0, 64));
    app.add_option("--n-tower", a.n_tower, "Labelled images for pretraining the vision tower (needs --grid; 0: none)");
    app.add_option("--one-shape", a.one_shape, "Fraction of scenes with a single shape (two and three share the rest); default: 1-3 uniformly")->check(CLI::Range(0.0, 1.0));
    CLI11_PARSE(app, argc, argv);
    if (a.grid > 0 && a.image_size % a.grid != 0) {
        std::fprintf(stderr, "gen-shapes-dataset: --image-size %d is not a multiple of --grid %d\n", a.image_size, a.grid);
        return 2;
    }
    if (a.n_tower > 0 && a.grid == 0) {
        std::fprintf(stderr, "gen-shapes-dataset: --n-tower needs --grid (its labels name each object's grid cell)\n");
        return 2;
    }

    const auto t0 = std::chrono::steady_clock::now();
    const fs::path out = a.out;
    for (const char * d : {"images/caption", "images/instruct", "images/eval"}) fs::create_directories(out / d);
    std::string corpus;
    std::map<std::string, int64_t> n_train_qa, n_eval_qa;

    try {
        // ---- stage 1: captions ----
        json captions = json::array();
        for (size_t i = 0; i < a.n_caption; ++i) {
            Rng rng(idamoe::demo::stream_seed(a.seed, kCaption, i));
            auto scene = idamoe::demo::sample_scene(rng, a.image_size, 1, a.grid, a.one_shape);
            write_png(out / "images/caption" / image_name(i), idamoe::demo::render_scene(scene, rng), a.image_size);
            std::string cap = idamoe::demo::caption_of(scene, rng);
            captions.push_back({{"id", "caption_" + std::to_string(i)},
                                {"image", "caption/" + image_name(i)},
                                {"conversations", json::array({{{"from", "human"}, {"value", "<image>"}},
                                                               {{"from", "gpt"}, {"value", cap}}})}});
            corpus += cap + "\n";
        }
        write_text(out / "captions.json", captions.dump(1) + "\n");

        // ---- stages 2-3: image instructions, 1..max_turns distinct categories per image ----
        json instruct = json::array();
        // The same images' presence turns again, one per record: the demo's stage 2 trains them first
        // (data.curriculum), as presence did not start learning inside the six-task mix (docs/demo_notes.md).
        json presence = json::array();
        for (size_t i = 0; i < a.n_instruct; ++i) {
            Rng rng(idamoe::demo::stream_seed(a.seed, kInstruct, i));
            auto scene = idamoe::demo::sample_scene(rng, a.image_size, 1, a.grid, a.one_shape);
            write_png(out / "images/instruct" / image_name(i), idamoe::demo::render_scene(scene, rng), a.image_size);
            json convs = json::array();
            for (const auto & qa : idamoe::demo::conversation(scene, rng, a.max_turns)) {
                std::string q = qa.question + "\n" + kShortAnswer;
                convs.push_back({{"from", "human"}, {"value", convs.empty() ? "<image>\n" + q : q}});
                convs.push_back({{"from", "gpt"}, {"value", qa.answer}});
                ++n_train_qa[qa.category];
                if (qa.category == "presence")
                    presence.push_back({{"id", "instruct_" + std::to_string(i) + "_p" + std::to_string(convs.size() - 2)},
                                        {"image", "instruct/" + image_name(i)},
                                        {"conversations", json::array({{{"from", "human"}, {"value", "<image>\n" + q}},
                                                                       {{"from", "gpt"}, {"value", qa.answer}}})}});
            }
            instruct.push_back({{"id", "instruct_" + std::to_string(i)},
                                {"image", "instruct/" + image_name(i)},
                                {"conversations", convs}});
            corpus += moe_llava_render(convs) + "\n";
        }
        write_text(out / "instruct_image.json", instruct.dump(1) + "\n");
        write_text(out / "presence_first.json", presence.dump(1) + "\n");

        json text = json::array();
        for (size_t i = 0; i < a.n_text; ++i) {
            Rng rng(idamoe::demo::stream_seed(a.seed, kText, i));
            auto qa = idamoe::demo::text_only_qa(rng);
            json convs = json::array({{{"from", "human"}, {"value", qa.question}}, {{"from", "gpt"}, {"value", qa.answer}}});
            text.push_back({{"id", "text_" + std::to_string(i)}, {"conversations", convs}});
            corpus += moe_llava_render(convs) + "\n";
            ++n_train_qa["text"];
        }
        write_text(out / "instruct_text.json", text.dump(1) + "\n");

        // ---- held-out evaluation: categories in rotation, a fresh scene until one supports it ----
        std::string eval;
        for (size_t i = 0; i < a.n_eval; ++i) {
            const std::string & cat = idamoe::demo::kCategories[i % idamoe::demo::kCategories.size()];
            Rng rng(idamoe::demo::stream_seed(a.seed, kEval, i));
            for (int attempt = 0;; ++attempt) {
                if (attempt == 1000) throw std::runtime_error("eval item " + std::to_string(i) + ": no scene supports category " + cat);
                auto scene = idamoe::demo::sample_scene(rng, a.image_size, cat == "largest" ? 2 : 1, a.grid, a.one_shape);
                auto qa = idamoe::demo::ask(scene, cat, rng);
                if (!qa) continue;
                write_png(out / "images/eval" / image_name(i), idamoe::demo::render_scene(scene, rng), a.image_size);
                json rec = {{"question_id", i},
                            {"image", "eval/" + image_name(i)},
                            {"text", qa->question + "\n" + kShortAnswer},
                            {"category", cat},
                            {"answer", qa->answer},
                            {"objects", objects_json(scene)}};  // for analysis; LLaVA's readers ignore extra keys
                eval += rec.dump() + "\n";
                ++n_eval_qa[cat];
                break;
            }
        }
        write_text(out / "eval_questions.jsonl", eval);

        // ---- vision-tower pretraining: images and per-object labels, drawn apart from every split above ----
        if (a.n_tower > 0) {
            fs::create_directories(out / "images/tower");
            std::string labels;
            for (size_t i = 0; i < a.n_tower; ++i) {
                Rng rng(idamoe::demo::stream_seed(a.seed, kTower, i));
                auto scene = idamoe::demo::sample_scene(rng, a.image_size, 1, a.grid, a.one_shape);
                write_png(out / "images/tower" / image_name(i), idamoe::demo::render_scene(scene, rng), a.image_size);
                json objs = objects_json(scene);
                for (size_t k = 0; k < scene.shapes.size(); ++k) objs[k]["cell"] = idamoe::demo::grid_cell(scene, scene.shapes[k]);
                labels += json{{"image", "tower/" + image_name(i)}, {"grid", a.grid}, {"objects", objs}}.dump() + "\n";
            }
            write_text(out / "tower_labels.jsonl", labels);
        }
        write_text(out / "corpus.txt", corpus);

        json info = {{"generator", "gen-shapes-dataset"},
                     {"seed", a.seed},
                     {"image_size", a.image_size},
                     {"grid", a.grid},
                     {"one_shape", a.one_shape},
                     {"n_caption", a.n_caption},
                     {"n_instruct", a.n_instruct},
                     {"n_text", a.n_text},
                     {"n_eval", a.n_eval},
                     {"n_tower", a.n_tower},
                     {"max_turns", a.max_turns},
                     {"train_questions_per_category", n_train_qa},
                     {"eval_questions_per_category", n_eval_qa},
                     {"image_root", "images"}};
        write_text(out / "dataset_info.json", info.dump(2) + "\n");
    } catch (const std::exception & e) {
        std::fprintf(stderr, "gen-shapes-dataset: %s\n", e.what());
        return 1;
    }
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::printf("gen-shapes-dataset: %zu caption, %zu instruct, %zu text-only, %zu eval records, %zu tower images "
                "(%zu images) in %s in %.1f s\n", a.n_caption, a.n_instruct, a.n_text, a.n_eval, a.n_tower,
                a.n_caption + a.n_instruct + a.n_eval + a.n_tower, a.out.c_str(), secs);
    return 0;
}
