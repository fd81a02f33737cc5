// defines: plan_epoch, build_example, collate, DataLoader
#include "data/loader.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <numeric>

namespace idamoe::data {

namespace {

// SplitMix64: tiny, well-mixed and identical on every platform.
struct Rng {
    uint64_t s;
    uint64_t next() {
        uint64_t z = (s += 0x9E3779B97F4A7C15ull);
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        return z ^ (z >> 31);
    }
};

std::vector<int64_t> randperm(int64_t n, Rng & rng) {
    std::vector<int64_t> p(n);
    std::iota(p.begin(), p.end(), 0);
    for (int64_t i = n - 1; i > 0; --i) std::swap(p[i], p[static_cast<int64_t>(rng.next() % static_cast<uint64_t>(i + 1))]);
    return p;
}

// LLaVA split_to_even_chunks: greedy to the chunk with the smallest running length, each capped at
// len/num_chunks; round-robin when the megabatch does not divide evenly.
std::vector<std::vector<int64_t>> split_to_even_chunks(const std::vector<int64_t> & idx, const std::vector<int64_t> & len,
                                                       int64_t n_chunks) {
    std::vector<std::vector<int64_t>> chunks(n_chunks);
    const int64_t n = static_cast<int64_t>(idx.size());
    if (n % n_chunks != 0) {
        for (int64_t i = 0; i < n; ++i) chunks[i % n_chunks].push_back(idx[i]);
        return chunks;
    }
    const int64_t per = n / n_chunks;
    std::vector<double> total(n_chunks, 0.0);
    for (int64_t i : idx) {
        int64_t c = std::min_element(total.begin(), total.end()) - total.begin();
        chunks[c].push_back(i);
        total[c] += static_cast<double>(len[i]);
        if (static_cast<int64_t>(chunks[c].size()) == per) total[c] = std::numeric_limits<double>::infinity();
    }
    return chunks;
}

// LLaVA get_length_grouped_indices (lengths >= 0), returning positions into `len`.
std::vector<int64_t> length_grouped(const std::vector<int64_t> & len, int64_t batch_size, int64_t n_chunks, Rng & rng) {
    auto perm = randperm(static_cast<int64_t>(len.size()), rng);
    const int64_t mb = batch_size * n_chunks;
    std::vector<int64_t> out;
    out.reserve(perm.size());
    for (size_t b = 0; b < perm.size(); b += mb) {
        std::vector<int64_t> m(perm.begin() + b, perm.begin() + std::min(perm.size(), b + mb));
        std::stable_sort(m.begin(), m.end(), [&](int64_t a, int64_t c) { return len[a] > len[c]; });
        for (auto & chunk : split_to_even_chunks(m, len, n_chunks)) out.insert(out.end(), chunk.begin(), chunk.end());
    }
    return out;
}

// LLaVA get_modality_length_grouped_indices.
std::vector<int64_t> modality_grouped(const std::vector<int64_t> & lengths, int64_t batch_size, int64_t n_chunks, Rng & rng) {
    std::vector<int64_t> mm_idx, mm_len, lang_idx, lang_len;
    for (int64_t i = 0; i < static_cast<int64_t>(lengths.size()); ++i) {
        if (lengths[i] > 0) { mm_idx.push_back(i); mm_len.push_back(lengths[i]); }
        else { lang_idx.push_back(i); lang_len.push_back(-lengths[i]); }
    }
    if (mm_idx.empty() || lang_idx.empty()) {  // one modality: plain length grouping
        std::vector<int64_t> abs_len(lengths.size());
        for (size_t i = 0; i < lengths.size(); ++i) abs_len[i] = std::abs(lengths[i]);
        return length_grouped(abs_len, batch_size, n_chunks, rng);
    }
    std::vector<int64_t> mm, lang;
    for (int64_t p : length_grouped(mm_len, batch_size, n_chunks, rng)) mm.push_back(mm_idx[p]);
    for (int64_t p : length_grouped(lang_len, batch_size, n_chunks, rng)) lang.push_back(lang_idx[p]);
    const size_t mb = static_cast<size_t>(batch_size * n_chunks);
    auto cut = [&](const std::vector<int64_t> & v) {
        std::vector<std::vector<int64_t>> r;
        for (size_t b = 0; b < v.size(); b += mb) r.emplace_back(v.begin() + b, v.begin() + std::min(v.size(), b + mb));
        return r;
    };
    auto mmb = cut(mm), lmb = cut(lang);
    std::vector<int64_t> additional = mmb.back();
    additional.insert(additional.end(), lmb.back().begin(), lmb.back().end());
    std::vector<std::vector<int64_t>> megabatches(mmb.begin(), mmb.end() - 1);
    megabatches.insert(megabatches.end(), lmb.begin(), lmb.end() - 1);
    auto order = randperm(static_cast<int64_t>(megabatches.size()), rng);
    std::vector<int64_t> out;
    for (int64_t o : order) out.insert(out.end(), megabatches[o].begin(), megabatches[o].end());
    std::sort(additional.begin(), additional.end());
    out.insert(out.end(), additional.begin(), additional.end());
    return out;
}

}  // namespace

std::vector<std::vector<int64_t>> plan_epoch(const std::vector<int64_t> & lengths, const LoaderOptions & opt, int64_t epoch) {
    Rng rng{opt.seed * 0x2545F4914F6CDD1Dull + static_cast<uint64_t>(epoch) * 0x9E3779B97F4A7C15ull + 1};
    const int64_t bs = opt.batch_size;
    std::vector<int64_t> flat = opt.group_by_modality
                                    ? modality_grouped(lengths, bs, opt.world_size * opt.grad_accum, rng)
                                    : randperm(static_cast<int64_t>(lengths.size()), rng);
    const int64_t n_micro = (static_cast<int64_t>(flat.size()) + bs - 1) / bs;
    const int64_t per_rank = n_micro / opt.world_size;
    std::vector<std::vector<int64_t>> out;
    out.reserve(per_rank);
    for (int64_t j = 0; j < per_rank; ++j) {
        int64_t k = opt.rank + j * opt.world_size;
        auto b = flat.begin() + k * bs, e = flat.begin() + std::min<int64_t>(flat.size(), (k + 1) * bs);
        out.emplace_back(b, e);
    }
    return out;
}

Example build_example(const LlavaDataset & ds, size_t index, const Tokenizer & tok, const LoaderOptions & opt,
                      BadSampleLog & bad) {
    const Sample & s = ds.at(index);
    const std::string where = ds.files()[s.source].json + "#" + std::to_string(s.record);
    Example ex;
    ex.id = s.id;
    TemplateResult r;
    try {
        r = apply_template(ds.template_name(), tok, s.turns);
    } catch (const std::exception & e) {  // TemplateError, TokenizerError
        bad.add(s.id, where, "template", e.what());
        ex.bad = true;
        ex.input_ids = {tok.pad_id() >= 0 ? tok.pad_id() : 0};
        ex.labels = {kIgnoreIndex};
        ex.masked = true;
        return ex;
    }
    if (r.mismatch) {
        bad.add(s.id, where, "tokenization_mismatch", r.mismatch_reason);
        ex.bad = true;
        ex.masked = true;
    }
    ex.input_ids = std::move(r.input_ids);
    ex.labels = std::move(r.labels);
    std::vector<std::string> paths = s.images;
    if (!paths.empty() && opt.image_tokens <= 0) {
        bad.add(s.id, where, "image_in_text_only_run", "sample has images but no vision tower is configured");
        ex.bad = true;
        std::vector<int64_t> ids, labels;
        for (size_t i = 0; i < ex.input_ids.size(); ++i)
            if (ex.input_ids[i] != kImageTokenId) { ids.push_back(ex.input_ids[i]); labels.push_back(kIgnoreIndex); }
        ex.input_ids.swap(ids);
        ex.labels.swap(labels);
        ex.masked = true;
        paths.clear();
    }
    if (opt.image_tokens > 0) expand_image_tokens(ex.input_ids, ex.labels, opt.image_tokens);

    // Truncate after expansion, never inside an image (see loader.h).
    int64_t n_img_tokens = 0;
    for (int64_t id : ex.input_ids) n_img_tokens += id == kImageTokenId;
    if (static_cast<int64_t>(ex.input_ids.size()) > opt.max_length) {
        int64_t cut = opt.max_length, before = 0;
        for (int64_t i = 0; i < cut; ++i) before += ex.input_ids[i] == kImageTokenId;
        cut -= before % std::max<int64_t>(opt.image_tokens, 1);
        before -= before % std::max<int64_t>(opt.image_tokens, 1);
        ex.input_ids.resize(cut);
        ex.labels.resize(cut);
        n_img_tokens = before;
        bool any = std::any_of(ex.labels.begin(), ex.labels.end(), [](int64_t l) { return l != kIgnoreIndex; });
        if (!any && !ex.masked) {
            bad.add(s.id, where, "truncated_no_target", "no trained token left after max_length " + std::to_string(opt.max_length));
            ex.bad = true;
        }
    }
    const int64_t kept = opt.image_tokens > 0 ? n_img_tokens / opt.image_tokens : 0;
    ex.image_paths.assign(paths.begin(), paths.begin() + std::min<int64_t>(kept, paths.size()));

    if (opt.load_images) {
        std::string errors;
        for (const auto & p : ex.image_paths) {
            try {
                ex.images.push_back(preprocess_image(decode_image_file(p), opt.image));
            } catch (const std::exception & e) {  // ImageError, or a bad processor config
                errors += (errors.empty() ? "" : "; ") + std::string(e.what());
                ex.images.push_back(blank_image(opt.image));
            }
        }
        if (!errors.empty()) {
            bad.add(s.id, where, "bad_image", errors);
            ex.bad = true;
            ex.masked = true;
        }
    }
    if (ex.masked) std::fill(ex.labels.begin(), ex.labels.end(), kIgnoreIndex);
    return ex;
}

Batch collate(std::vector<Example> & examples, int64_t pad_id) {
    Batch b;
    const int64_t B = static_cast<int64_t>(examples.size());
    int64_t T = 1;
    for (const auto & e : examples) T = std::max<int64_t>(T, e.input_ids.size());
    b.input_ids = torch::full({B, T}, pad_id >= 0 ? pad_id : 0, torch::kInt64);
    b.attention_mask = torch::zeros({B, T}, torch::kInt64);
    b.labels = torch::full({B, T}, kIgnoreIndex, torch::kInt64);
    auto ids = b.input_ids.accessor<int64_t, 2>();
    auto mask = b.attention_mask.accessor<int64_t, 2>();
    auto lab = b.labels.accessor<int64_t, 2>();
    std::vector<torch::Tensor> images;
    for (int64_t r = 0; r < B; ++r) {
        const auto & e = examples[r];
        for (size_t t = 0; t < e.input_ids.size(); ++t) {
            ids[r][t] = e.input_ids[t];
            mask[r][t] = 1;
            lab[r][t] = e.labels[t];
            if (t >= 1 && e.labels[t] != kIgnoreIndex) ++b.n_target_tokens;
        }
        for (auto & im : e.images) images.push_back(im);
        b.sample_ids.push_back(e.id);
        b.n_bad_samples += e.bad ? 1 : 0;
    }
    if (!images.empty()) b.images = torch::stack(images);
    return b;
}

DataLoader::DataLoader(std::shared_ptr<const LlavaDataset> ds, std::shared_ptr<const Tokenizer> tok, LoaderOptions opt)
    : ds_(std::move(ds)), tok_(std::move(tok)), opt_(std::move(opt)) {
    if (opt_.batch_size < 1 || opt_.world_size < 1 || opt_.rank < 0 || opt_.rank >= opt_.world_size || opt_.grad_accum < 1)
        throw DataError("loader: need batch_size >= 1, grad_accum >= 1 and 0 <= rank < world_size");
    opt_.prefetch = std::max<int64_t>(opt_.prefetch, 1);
    for (const auto & s : ds_->samples()) lengths_.push_back(s.modality_length);
    per_epoch_ = static_cast<int64_t>(plan(0)->size());
    if (per_epoch_ == 0)
        throw DataError("loader: " + std::to_string(ds_->size()) + " samples give no micro-batch of " +
                        std::to_string(opt_.batch_size) + " for each of " + std::to_string(opt_.world_size) + " ranks");
    start_ = {opt_.seed, 0, 0};
    start_workers();
}

DataLoader::~DataLoader() { stop_workers(); }

int64_t DataLoader::batches_per_epoch() const { return per_epoch_; }

int64_t DataLoader::samples_built() const {
    std::lock_guard<std::mutex> lock(mu_);
    return built_samples_;
}

std::shared_ptr<const std::vector<std::vector<int64_t>>> DataLoader::plan(int64_t epoch) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = plans_.find(epoch);
    if (it != plans_.end()) return it->second;
    auto p = std::make_shared<const std::vector<std::vector<int64_t>>>(plan_epoch(lengths_, opt_, epoch));
    plans_[epoch] = p;
    while (plans_.size() > 3) plans_.erase(plans_.begin());
    return p;
}

std::pair<int64_t, int64_t> DataLoader::locate(int64_t seq) {
    int64_t abs = start_.offset + seq;
    return {start_.epoch + abs / per_epoch_, abs % per_epoch_};
}

Batch DataLoader::build(int64_t seq) {
    std::pair<int64_t, int64_t> loc;
    {
        std::lock_guard<std::mutex> lock(mu_);
        loc = locate(seq);
    }
    auto p = plan(loc.first);
    const auto & indices = (*p)[loc.second];
    std::vector<Example> ex;
    for (int64_t i : indices) ex.push_back(build_example(*ds_, static_cast<size_t>(i), *tok_, opt_, bad_));
    {
        std::lock_guard<std::mutex> lock(mu_);
        built_samples_ += static_cast<int64_t>(indices.size());
    }
    return collate(ex, tok_->pad_id());
}

void DataLoader::start_workers() {
    stop_ = false;
    for (int64_t w = 0; w < opt_.num_workers; ++w) workers_.emplace_back([this] { worker_loop(); });
}

void DataLoader::stop_workers() {
    {
        std::lock_guard<std::mutex> lock(mu_);
        stop_ = true;
    }
    cv_.notify_all();
    for (auto & t : workers_) t.join();
    workers_.clear();
}

void DataLoader::worker_loop() {
    for (;;) {
        int64_t seq;
        {
            std::unique_lock<std::mutex> lock(mu_);
            cv_.wait(lock, [&] { return stop_ || claimed_ < delivered_ + opt_.prefetch; });
            if (stop_) return;
            seq = claimed_++;
        }
        Slot slot;
        try {
            slot.batch = build(seq);
        } catch (...) {
            slot.error = std::current_exception();
        }
        slot.done = true;
        {
            std::lock_guard<std::mutex> lock(mu_);
            slots_[seq] = std::move(slot);
        }
        cv_.notify_all();
    }
}

Batch DataLoader::next() {
    Batch b;
    if (workers_.empty()) {
        b = build(delivered_);
        std::lock_guard<std::mutex> lock(mu_);
        ++delivered_;
        claimed_ = delivered_;
    } else {
        Slot s;
        {
            std::unique_lock<std::mutex> lock(mu_);
            cv_.wait(lock, [&] { return slots_.count(delivered_) && slots_[delivered_].done; });
            s = std::move(slots_[delivered_]);
            slots_.erase(delivered_);
            ++delivered_;
        }
        cv_.notify_all();
        if (s.error) std::rethrow_exception(s.error);
        b = std::move(s.batch);
    }
    const int64_t built = samples_built(), n_bad = bad_.count();
    if (built >= 200 && static_cast<double>(n_bad) > opt_.max_bad_fraction * static_cast<double>(built))
        throw DataError("too many bad samples while loading (" + std::to_string(n_bad) + " of " + std::to_string(built) +
                        " > max_bad_fraction " + std::to_string(opt_.max_bad_fraction) + "): " + bad_.summary());
    return b;
}

SamplerState DataLoader::position() const {
    std::lock_guard<std::mutex> lock(mu_);
    int64_t abs = start_.offset + delivered_;
    return {opt_.seed, start_.epoch + abs / per_epoch_, abs % per_epoch_};
}

nlohmann::json DataLoader::state() const {
    auto p = position();
    return {{"seed", p.seed},
            {"epoch", p.epoch},
            {"offset", p.offset},
            {"world_size", opt_.world_size},
            {"rank", opt_.rank},
            {"batch_size", opt_.batch_size},
            {"grad_accum", opt_.grad_accum},
            {"group_by_modality", opt_.group_by_modality},
            {"dataset_size", static_cast<int64_t>(ds_->size())}};
}

void DataLoader::load_state(const nlohmann::json & j) {
    try {
        auto same = [&](const char * key, int64_t have) {
            if (j.at(key).get<int64_t>() != have)
                throw DataError(std::string("loader state was saved with ") + key + " = " + j.at(key).dump() +
                                ", this run has " + std::to_string(have) + ": the sample order would not continue");
        };
        same("world_size", opt_.world_size);
        same("batch_size", opt_.batch_size);
        same("grad_accum", opt_.grad_accum);
        same("dataset_size", static_cast<int64_t>(ds_->size()));
        // Ranks own different micro-batches: a swapped state would silently repeat another rank's data.
        if (j.contains("rank")) same("rank", opt_.rank);
        if (j.at("group_by_modality").get<bool>() != opt_.group_by_modality)
            throw DataError("loader state was saved with a different group_by_modality setting");
        stop_workers();
        {
            std::lock_guard<std::mutex> lock(mu_);
            opt_.seed = j.at("seed").get<uint64_t>();
            start_ = {opt_.seed, j.at("epoch").get<int64_t>(), j.at("offset").get<int64_t>()};
            delivered_ = claimed_ = 0;
            slots_.clear();
            plans_.clear();
        }
        start_workers();
    } catch (const nlohmann::json::exception & e) {
        throw DataError(std::string("malformed loader state: ") + e.what());
    }
}

}  // namespace idamoe::data
