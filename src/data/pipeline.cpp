// defines: tokenizer_path, image_tokens_for, loader_options, inspect_samples
#include "data/pipeline.h"

#include <filesystem>

namespace idamoe::data {

std::string tokenizer_path(const core::Config & cfg) {
    return cfg.data.tokenizer.empty() ? cfg.model.llm_path : cfg.data.tokenizer;
}

int64_t image_tokens_for(const core::Config & cfg) {
    if (cfg.vision.path.empty()) return 0;
    return image_token_count(cfg.vision.path, cfg.vision.select_feature);
}

LoaderOptions loader_options(const core::Config & cfg, int64_t rank, int64_t world_size) {
    LoaderOptions o;
    o.batch_size = cfg.data.batch_size;
    o.grad_accum = cfg.data.grad_accum;
    o.world_size = world_size;
    o.rank = rank;
    o.num_workers = cfg.data.num_workers;
    o.prefetch = cfg.data.prefetch;
    o.max_length = cfg.data.max_length;
    o.group_by_modality = cfg.data.group_by_modality_length;
    o.seed = static_cast<uint64_t>(cfg.train.seed);
    o.max_bad_fraction = cfg.data.max_bad_fraction;
    o.image_tokens = image_tokens_for(cfg);
    if (!cfg.vision.path.empty())
        o.image = ImageProcessorConfig::from_dir(cfg.vision.path, cfg.vision.image_aspect_ratio == "pad");
    return o;
}

int64_t inspect_samples(const core::Config & cfg, int64_t n, std::ostream & os) {
    auto tok = load_tokenizer(tokenizer_path(cfg));
    LlavaDataset ds(cfg.data.train, cfg.data.template_name, cfg.data.max_bad_fraction);
    LoaderOptions opt = loader_options(cfg, 0, 1);
    opt.load_images = false;
    if (opt.image_tokens == 0) opt.image_tokens = 1;  // show where images sit even without a tower
    os << "tokenizer: " << tok->describe() << "\n"
       << "template: " << cfg.data.template_name << ", image tokens per image: " << opt.image_tokens
       << ", max_length: " << opt.max_length << "\n"
       << "dataset: " << ds.size() << " usable samples of " << ds.records_read() << " records";
    if (ds.bad().count() > 0) os << " (" << ds.bad().summary() << ")";
    os << "\n";
    BadSampleLog bad;
    const int64_t shown = std::min<int64_t>(n, static_cast<int64_t>(ds.size()));
    for (int64_t i = 0; i < shown; ++i) {
        Example ex = build_example(ds, static_cast<size_t>(i), *tok, opt, bad);
        int64_t trained = 0;
        for (int64_t l : ex.labels) trained += l != kIgnoreIndex;
        os << "\n=== sample " << i << "  id=" << ex.id << "  tokens=" << ex.input_ids.size() << "  trained=" << trained
           << "  images=" << ex.image_paths.size();
        for (const auto & p : ex.image_paths)
            if (!std::filesystem::exists(p)) os << "  [missing image " << p << "]";
        os << (ex.masked ? "  [MASKED: reported problem]" : "") << "\n";
        size_t t = 0;
        while (t < ex.input_ids.size()) {
            if (ex.input_ids[t] == kImageTokenId) {
                size_t e = t;
                while (e < ex.input_ids.size() && ex.input_ids[e] == kImageTokenId) ++e;
                os << "<image×" << (e - t) << ">";
                t = e;
                continue;
            }
            const bool tr = ex.labels[t] != kIgnoreIndex;
            std::vector<int64_t> run;
            while (t < ex.input_ids.size() && ex.input_ids[t] != kImageTokenId && (ex.labels[t] != kIgnoreIndex) == tr)
                run.push_back(ex.input_ids[t++]);
            os << (tr ? "⟦" : "") << tok->decode(run) << (tr ? "⟧" : "");
        }
        os << "\n";
    }
    auto kinds = bad.by_kind();
    int64_t mismatches = kinds.count("tokenization_mismatch") ? kinds["tokenization_mismatch"] : 0;
    os << "\n" << shown << " samples shown: " << mismatches << " tokenization mismatch(es)";
    if (bad.count() > 0) os << "; problems: " << bad.summary();
    os << "\n";
    return mismatches;
}

}  // namespace idamoe::data
