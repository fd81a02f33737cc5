// LLaVA dataset loading, bad-input reports, example building (expansion, truncation), collation,
// the modality-grouped sampler and loader save/restore.
#include "data/loader.h"
#include "data/pipeline.h"
#include "test_utils.h"

#include <catch2/catch.hpp>

#include <filesystem>
#include <set>
#include <sstream>

using namespace idamoe::data;
using idamoe::core::DatasetEntry;
using idamoe::test::fixture_path;
using idamoe::test::TempDir;
using idamoe::test::write_text;
namespace fs = std::filesystem;

namespace {

std::shared_ptr<Tokenizer> qwen2() {
    static std::shared_ptr<Tokenizer> tok = load_tokenizer(fixture_path("tokenizer/qwen2"));
    return tok;
}

nlohmann::json img_rec(const std::string & id, const std::string & image, const std::string & q, const std::string & a) {
    return {{"id", id}, {"image", image},
            {"conversations", {{{"from", "human"}, {"value", "<image>\n" + q}}, {{"from", "gpt"}, {"value", a}}}}};
}
nlohmann::json txt_rec(const std::string & id, const std::string & q, const std::string & a) {
    return {{"id", id}, {"conversations", {{{"from", "human"}, {"value", q}}, {{"from", "gpt"}, {"value", a}}}}};
}

// n_img image samples (alternating two fixture images) + n_txt text samples of varying length.
std::string make_dataset(const TempDir & d, int n_img, int n_txt, const std::string & name = "train.json") {
    fs::create_directories(d.str("imgs"));
    fs::copy_file(fixture_path("images/small.png"), d.str("imgs/a.png"), fs::copy_options::overwrite_existing);
    fs::copy_file(fixture_path("images/img.bmp"), d.str("imgs/b.bmp"), fs::copy_options::overwrite_existing);
    nlohmann::json arr = nlohmann::json::array();
    for (int i = 0; i < n_img; ++i)
        arr.push_back(img_rec("img" + std::to_string(i), i % 2 ? "b.bmp" : "a.png", "What is this?",
                              std::string("It is number ") + std::to_string(i) + std::string(i % 7, '!')));
    for (int i = 0; i < n_txt; ++i)
        arr.push_back(txt_rec("txt" + std::to_string(i), "Count to " + std::to_string(i % 9),
                              std::string(1 + i % 5, 'x') + " done"));
    write_text(d.str(name), arr.dump());
    return d.str(name);
}

std::map<std::string, int64_t> kinds_of(const LlavaDataset & ds) { return ds.bad().by_kind(); }

LoaderOptions small_opts() {
    LoaderOptions o;
    o.batch_size = 4;
    o.image_tokens = 5;
    o.max_length = 256;
    o.num_workers = 2;
    o.prefetch = 3;
    o.image = ImageProcessorConfig::clip336(true);
    o.image.size = 28;
    return o;
}

}  // namespace

TEST_CASE("dataset: good records load, each kind of bad record is reported and left out", "[data][dataset]") {
    TempDir d;
    make_dataset(d, 2, 2);
    nlohmann::json arr = nlohmann::json::parse(std::ifstream(d.str("train.json")));
    arr.push_back(txt_rec("ok_leading_gpt", "q", "a"));
    arr.back()["conversations"].insert(arr.back()["conversations"].begin(),
                                     nlohmann::json::object({{"from", "gpt"}, {"value", "stray"}}));
    arr.push_back({{"id", "no_alt"}, {"conversations", {{{"from", "human"}, {"value", "a"}}, {{"from", "human"}, {"value", "b"}}}}});
    arr.push_back({{"id", "ends_human"}, {"conversations", {{{"from", "human"}, {"value", "a"}}, {{"from", "gpt"}, {"value", "b"}}, {{"from", "human"}, {"value", "c"}}}}});
    arr.push_back(txt_rec("tag_no_image", "<image>\nq", "a"));
    arr.push_back({{"id", "image_no_tag"}, {"image", "a.png"}, {"conversations", {{{"from", "human"}, {"value", "q"}}, {{"from", "gpt"}, {"value", "a"}}}}});
    arr.push_back(txt_rec("empty_answer", "q", "  "));
    arr.push_back(42);
    arr.push_back({{"id", 7}, {"conversations", "nope"}});
    std::string json = arr.dump();
    json.insert(json.size() - 1, ", {\"id\": \"latin1\", \"conversations\": [{\"from\": \"human\", \"value\": \"caf\xE9\"}, {\"from\": \"gpt\", \"value\": \"x\"}]}");
    write_text(d.str("train.json"), json);
    LlavaDataset ds({{d.str("train.json"), d.str("imgs")}}, "moe_llava", 1.0);
    CHECK(ds.size() == 5);  // 2 image + 2 text + the one with a leading gpt turn
    CHECK(ds.records_read() == 13);
    CHECK(kinds_of(ds)["non_utf8"] == 1);
    auto kinds = ds.bad().by_kind();
    CHECK(kinds["bad_roles"] == 2);
    CHECK(kinds["image_tag_without_image"] == 1);
    CHECK(kinds["image_without_tag"] == 1);
    CHECK(kinds["empty_answer"] == 1);
    CHECK(kinds["malformed_record"] == 2);
    CHECK(ds.bad().count() == 8);
    CHECK(ds.bad().entries()[0].where.find("train.json#") != std::string::npos);
    CHECK(ds.n_image_samples() == 2);
    CHECK(ds.at(0).images[0] == (fs::path(d.str("imgs")) / "a.png").string());
    CHECK(ds.at(0).modality_length > 0);
    CHECK(ds.at(2).modality_length < 0);
    // Over the bad budget: stops with a summary.
    CHECK_THROWS_WITH(LlavaDataset({{d.str("train.json"), d.str("imgs")}}, "moe_llava", 0.1),
                      Catch::Contains("too many bad samples") && Catch::Contains("bad_roles"));
    // plain needs one image + exactly one answer: the text-only samples are left out.
    LlavaDataset plain({{d.str("train.json"), d.str("imgs")}}, "plain", 1.0);
    CHECK(plain.size() == 2);
}

TEST_CASE("dataset: malformed files, missing files and missing image roots fail fast with the path", "[data][dataset]") {
    TempDir d;
    make_dataset(d, 1, 1);
    write_text(d.str("broken.json"), "[{\"id\": \"a\", \"conversations\": [}]");
    CHECK_THROWS_WITH(LlavaDataset({{d.str("broken.json"), d.str("imgs")}}, "moe_llava", 1.0),
                      Catch::Contains("broken.json") && Catch::Contains("byte offset 31"));
    CHECK_THROWS_WITH(LlavaDataset({{d.str("nope.json"), d.str("imgs")}}, "moe_llava", 1.0), Catch::Contains("nope.json"));
    CHECK_THROWS_WITH(LlavaDataset({{d.str("train.json"), d.str("no_such_root")}}, "moe_llava", 1.0),
                      Catch::Contains("no_such_root"));
    CHECK_THROWS_AS(LlavaDataset({{d.str("train.json"), d.str("imgs")}}, "vicuna", 1.0), DataError);
    // JSONL: one record per line; a malformed line is one counted bad sample with its byte offset.
    write_text(d.str("t.jsonl"), txt_rec("a", "q", "x").dump() + "\n{oops\n" + txt_rec("b", "q", "y").dump() +
                                     "\n{\"id\": \"l4\", \"conversations\": [{\"from\": \"human\", \"value\": \"caf\xE9\"}, "
                                     "{\"from\": \"gpt\", \"value\": \"x\"}]}\n");
    LlavaDataset jl({{d.str("t.jsonl"), ""}}, "moe_llava", 1.0);
    CHECK(jl.size() == 2);
    REQUIRE(jl.bad().count() == 2);
    CHECK(kinds_of(jl)["non_utf8"] == 1);
    CHECK(kinds_of(jl)["malformed_json"] == 1);
    CHECK(jl.bad().entries()[0].where == d.str("t.jsonl") + ":2");
    // Several files are concatenated in order.
    LlavaDataset two({{d.str("train.json"), d.str("imgs")}, {d.str("t.jsonl"), ""}}, "moe_llava", 1.0);
    CHECK(two.size() == 4);
    CHECK(two.at(3).id == "b");
    CHECK(two.at(3).source == 1);
}

TEST_CASE("dataset: examples expand images, truncate without splitting an image, collate with masks", "[data][dataset]") {
    TempDir d;
    make_dataset(d, 2, 2);
    auto tok = qwen2();
    LlavaDataset ds({{d.str("train.json"), d.str("imgs")}}, "moe_llava", 1.0);
    auto opt = small_opts();
    BadSampleLog bad;
    Example e = build_example(ds, 0, *tok, opt, bad);
    int64_t img = std::count(e.input_ids.begin(), e.input_ids.end(), kImageTokenId);
    CHECK(img == 5);
    REQUIRE(e.images.size() == 1);
    CHECK(e.images[0].sizes() == torch::IntArrayRef({3, 28, 28}));
    CHECK_FALSE(e.masked);
    // The image run starts at position p; cut inside it → the whole image goes.
    auto p = std::find(e.input_ids.begin(), e.input_ids.end(), kImageTokenId) - e.input_ids.begin();
    opt.max_length = p + 3;
    Example t = build_example(ds, 0, *tok, opt, bad);
    CHECK(static_cast<int64_t>(t.input_ids.size()) == p);
    CHECK(t.images.empty());
    CHECK(bad.by_kind()["truncated_no_target"] == 1);
    opt.max_length = p + 5 + 2;  // just after the image: image kept whole
    Example k = build_example(ds, 0, *tok, opt, bad);
    CHECK(static_cast<int64_t>(k.input_ids.size()) == p + 7);
    CHECK(k.images.size() == 1);

    opt.max_length = 256;
    std::vector<Example> exs = {build_example(ds, 0, *tok, opt, bad), build_example(ds, 2, *tok, opt, bad)};
    size_t l0 = exs[0].input_ids.size(), l1 = exs[1].input_ids.size();
    Batch b = collate(exs, tok->pad_id());
    const int64_t T = std::max(l0, l1);
    CHECK(b.input_ids.sizes() == torch::IntArrayRef({2, T}));
    CHECK(b.attention_mask.sum().item<int64_t>() == static_cast<int64_t>(l0 + l1));
    CHECK(b.images.sizes() == torch::IntArrayRef({1, 3, 28, 28}));
    CHECK(b.sample_ids == std::vector<std::string>{"img0", "txt0"});
    int64_t targets = 0;
    for (auto * ex : {&exs[0], &exs[1]})
        for (size_t i = 1; i < ex->labels.size(); ++i) targets += ex->labels[i] != kIgnoreIndex;
    CHECK(b.n_target_tokens == targets);
    CHECK(targets > 0);
    // Padding: pad id, mask 0, label -100.
    int64_t short_row = l0 < l1 ? 0 : 1;
    CHECK(b.attention_mask[short_row][T - 1].item<int64_t>() == 0);
    CHECK(b.labels[short_row][T - 1].item<int64_t>() == kIgnoreIndex);
    CHECK(b.input_ids[short_row][T - 1].item<int64_t>() == tok->pad_id());
}

TEST_CASE("dataset: a corrupt image masks its row, is reported with the file, and the batch goes on", "[data][dataset]") {
    TempDir d;
    make_dataset(d, 2, 0);
    fs::copy_file(fixture_path("images/truncated.jpg"), d.str("imgs/a.png"), fs::copy_options::overwrite_existing);
    LlavaDataset ds({{d.str("train.json"), d.str("imgs")}}, "moe_llava", 1.0);
    BadSampleLog bad;
    Example e = build_example(ds, 0, *qwen2(), small_opts(), bad);
    CHECK(e.masked);
    REQUIRE(e.images.size() == 1);
    CHECK(e.images[0].abs().sum().item<float>() == 0.0f);
    for (int64_t l : e.labels) CHECK(l == kIgnoreIndex);
    REQUIRE(bad.count() == 1);
    CHECK(bad.entries()[0].kind == "bad_image");
    CHECK(bad.entries()[0].detail.find("a.png") != std::string::npos);
    CHECK(bad.entries()[0].id == "img0");
}

TEST_CASE("dataset: loader stops with a summary when runtime failures exceed max_bad_fraction", "[data][dataset]") {
    TempDir d;
    make_dataset(d, 40, 0);
    fs::copy_file(fixture_path("images/zero.png"), d.str("imgs/a.png"), fs::copy_options::overwrite_existing);
    auto ds = std::make_shared<LlavaDataset>(std::vector<DatasetEntry>{{d.str("train.json"), d.str("imgs")}}, "moe_llava", 1.0);
    auto opt = small_opts();
    opt.max_bad_fraction = 0.1;  // half the images are empty files
    DataLoader dl(ds, qwen2(), opt);
    bool stopped = false;
    for (int i = 0; i < 100 && !stopped; ++i) {
        try {
            dl.next();
        } catch (const DataError & e) {
            stopped = true;
            CHECK(std::string(e.what()).find("bad_image") != std::string::npos);
        }
    }
    CHECK(stopped);
}

TEST_CASE("sampler: ranks get disjoint, complete, deterministic shards", "[data][sampler]") {
    std::vector<int64_t> lengths;
    for (int i = 0; i < 103; ++i) lengths.push_back(i % 3 ? 10 + i : -(5 + i));
    LoaderOptions o;
    o.batch_size = 4;
    o.world_size = 3;
    o.grad_accum = 2;
    for (bool group : {false, true}) {
        o.group_by_modality = group;
        std::multiset<int64_t> seen;
        for (int64_t r = 0; r < 3; ++r) {
            o.rank = r;
            auto p = plan_epoch(lengths, o, 0);
            CHECK(p.size() == 26 / 3);  // ceil(103/4) = 26 micro-batches, 8 per rank
            CHECK(p == plan_epoch(lengths, o, 0));
            CHECK(p != plan_epoch(lengths, o, 1));
            for (auto & b : p) seen.insert(b.begin(), b.end());
        }
        CHECK(seen.size() == 24 * 4);                 // 24 full micro-batches dealt, none twice
        CHECK(std::set<int64_t>(seen.begin(), seen.end()).size() == seen.size());
    }
}

TEST_CASE("sampler: group_by_modality makes every optimizer step single-modality, length-balanced", "[data][sampler]") {
    std::vector<int64_t> lengths;
    for (int i = 0; i < 200; ++i) lengths.push_back(i < 120 ? 5 + (i * 37) % 90 : -(3 + (i * 11) % 50));
    LoaderOptions o;
    o.batch_size = 4;
    o.world_size = 2;
    o.grad_accum = 2;
    o.seed = 7;
    o.group_by_modality = true;
    o.rank = 0;
    auto r0 = plan_epoch(lengths, o, 0);
    o.rank = 1;
    auto r1 = plan_epoch(lengths, o, 0);
    REQUIRE(r0.size() == r1.size());
    REQUIRE(r0.size() == 25);
    // One optimizer step = grad_accum micro-batches on each rank = 16 samples; megabatch = 16.
    // 120 image samples → 7 full megabatches + 8 left; 80 text → 5 full; leftovers form the last step.
    int mixed = 0;
    for (size_t step = 0; step + 1 < r0.size() / 2 + 1; ++step) {
        std::set<bool> modality;
        for (auto * r : {&r0, &r1})
            for (size_t m = step * 2; m < step * 2 + 2 && m < r->size(); ++m)
                for (int64_t i : (*r)[m]) modality.insert(lengths[i] > 0);
        if (modality.size() > 1) ++mixed;
        if (step + 1 < r0.size() / 2) CHECK(modality.size() == 1);
    }
    CHECK(mixed <= 1);
    // Within a full megabatch the 4 micro-batches have nearly equal total length (greedy balance).
    std::vector<int64_t> totals;
    for (size_t m = 0; m < 2; ++m)
        for (auto * r : {&r0, &r1}) {
            int64_t t = 0;
            for (int64_t i : (*r)[m]) t += std::abs(lengths[i]);
            totals.push_back(t);
        }
    auto [mn, mx] = std::minmax_element(totals.begin(), totals.end());
    INFO("micro-batch length totals in step 0: " << totals[0] << " " << totals[1] << " " << totals[2] << " " << totals[3]);
    CHECK(*mx - *mn <= 90);  // at most one sample's length apart
}

TEST_CASE("loader: saved position restores to exactly the next batch (also across epochs)", "[data][sampler]") {
    TempDir d;
    make_dataset(d, 10, 9);
    auto ds = std::make_shared<LlavaDataset>(std::vector<DatasetEntry>{{d.str("train.json"), d.str("imgs")}}, "moe_llava", 1.0);
    auto opt = small_opts();
    opt.batch_size = 3;
    DataLoader a(ds, qwen2(), opt);
    const int64_t per = a.batches_per_epoch();
    CHECK(per == 7);  // ceil(19 / 3) micro-batches, one rank
    for (int i = 0; i < 4; ++i) a.next();
    nlohmann::json saved = a.state();
    CHECK(saved["offset"] == 4);
    std::vector<std::vector<std::string>> want;
    std::vector<torch::Tensor> want_ids;
    for (int i = 0; i < 5; ++i) {  // crosses into epoch 1
        Batch b = a.next();
        want.push_back(b.sample_ids);
        want_ids.push_back(b.input_ids);
    }
    CHECK(a.position().epoch == 1);
    opt.num_workers = 0;  // restoring into a synchronous loader gives the same stream
    DataLoader b(ds, qwen2(), opt);
    b.next();
    b.load_state(nlohmann::json::parse(saved.dump()));
    for (int i = 0; i < 5; ++i) {
        Batch x = b.next();
        CHECK(x.sample_ids == want[i]);
        CHECK(torch::equal(x.input_ids, want_ids[i]));
    }
    // Every batch: one image tensor per run of image_tokens placeholders; masks match lengths.
    for (int i = 0; i < 7; ++i) {
        Batch x = b.next();
        int64_t placeholders = (x.input_ids == kImageTokenId).sum().item<int64_t>();
        int64_t n_img = x.images.defined() ? x.images.size(0) : 0;
        CHECK(placeholders == n_img * opt.image_tokens);
        CHECK(x.labels.masked_select(x.attention_mask == 0).ne(kIgnoreIndex).sum().item<int64_t>() == 0);
        CHECK((x.labels.masked_select(x.input_ids == kImageTokenId) == kIgnoreIndex).all().item<bool>());
    }
    // Epoch 1 is a different order from epoch 0.
    auto o = opt;
    std::vector<int64_t> lengths;
    for (auto & s : ds->samples()) lengths.push_back(s.modality_length);
    CHECK(plan_epoch(lengths, o, 0) != plan_epoch(lengths, o, 1));
    // A state from another world size is refused with a reason.
    auto other = saved;
    other["world_size"] = 2;
    CHECK_THROWS_WITH(b.load_state(other), Catch::Contains("world_size"));
}

TEST_CASE("inspect: prints tokenized samples with trained spans and the mismatch count", "[data][dataset]") {
    TempDir d;
    make_dataset(d, 1, 1);
    idamoe::core::Config cfg;
    cfg.model.llm_path = fixture_path("tokenizer/qwen2");
    cfg.vision.path = fixture_path("hf/clip_vision");
    cfg.data.train = {{d.str("train.json"), d.str("imgs")}};
    cfg.data.template_name = "moe_llava";
    std::ostringstream os;
    int64_t mism = inspect_samples(cfg, 5, os);
    std::string out = os.str();
    INFO(out);
    CHECK(mism == 0);
    CHECK(out.find("<image×9>") != std::string::npos);
    CHECK(out.find("⟦ It is number 0<|endoftext|>⟧") != std::string::npos);
    CHECK(out.find("0 tokenization mismatch(es)") != std::string::npos);
    auto opt = loader_options(cfg, 0, 1);
    CHECK(opt.image_tokens == 9);
    CHECK(opt.image.kind == "clip");
    CHECK(opt.image.size == 42);
}
