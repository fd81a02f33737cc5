// defines: LlavaDataset, BadSampleLog, count_image_tags
#include "data/dataset.h"

#include <spdlog/spdlog.h>

#include <filesystem>
#include <fstream>
#include <sstream>

namespace fs = std::filesystem;

namespace idamoe::data {

void BadSampleLog::add(const std::string & id, const std::string & where, const std::string & kind,
                       const std::string & detail) {
    std::lock_guard<std::mutex> lock(mu_);
    ++count_;
    ++kinds_[kind];
    if (entries_.size() < keep_) {
        entries_.push_back({id, where, kind, detail});
        spdlog::warn("bad sample {} ({}): {}: {}", id, where, kind, detail);
    } else if (entries_.size() == keep_ && count_ == static_cast<int64_t>(keep_) + 1) {
        spdlog::warn("more bad samples: further reports are counted, not printed");
    }
}

int64_t BadSampleLog::count() const {
    std::lock_guard<std::mutex> lock(mu_);
    return count_;
}

std::map<std::string, int64_t> BadSampleLog::by_kind() const {
    std::lock_guard<std::mutex> lock(mu_);
    return kinds_;
}

std::vector<BadSampleLog::Entry> BadSampleLog::entries() const {
    std::lock_guard<std::mutex> lock(mu_);
    return entries_;
}

std::string BadSampleLog::summary() const {
    std::lock_guard<std::mutex> lock(mu_);
    std::ostringstream s;
    s << count_ << " bad";
    const char * sep = ": ";
    for (const auto & [k, n] : kinds_) { s << sep << k << "=" << n; sep = ", "; }
    for (size_t i = 0; i < entries_.size() && i < 5; ++i)
        s << (i ? "; " : "; e.g. ") << entries_[i].id << " (" << entries_[i].where << ") " << entries_[i].detail;
    return s.str();
}

int64_t count_image_tags(const std::string & s) {
    int64_t n = 0;
    for (size_t p = 0; (p = s.find(kImageTag, p)) != std::string::npos; p += 7) ++n;
    return n;
}

LlavaDataset::LlavaDataset(const std::vector<core::DatasetEntry> & files, const std::string & template_name,
                           double max_bad_fraction)
    : files_(files), template_(template_name) {
    try {
        check_template_name(template_name);
    } catch (const TemplateError & e) {
        throw DataError(e.what());
    }
    if (files.empty()) throw DataError("no dataset files given (data.train is empty)");
    for (const auto & f : files) {
        if (!fs::is_regular_file(f.json)) throw DataError("dataset file not found: " + f.json);
        if (!f.image_root.empty() && !fs::is_directory(f.image_root))
            throw DataError("image root not found: " + f.image_root + " (for " + f.json + ")");
    }
    for (int32_t i = 0; i < static_cast<int32_t>(files.size()); ++i) load_file(i);
    const int64_t bad = bad_.count();
    spdlog::info("dataset: {} samples ({} with images) from {} records in {} file(s), {} left out", samples_.size(),
                 n_image_samples(), records_, files.size(), bad);
    if (records_ > 0 && static_cast<double>(bad) > max_bad_fraction * static_cast<double>(records_))
        throw DataError("too many bad samples (" + std::to_string(bad) + " of " + std::to_string(records_) +
                        " > max_bad_fraction " + std::to_string(max_bad_fraction) + "): " + bad_.summary());
    if (samples_.empty()) throw DataError("no usable samples in the dataset: " + bad_.summary());
}

int64_t LlavaDataset::n_image_samples() const {
    int64_t n = 0;
    for (const auto & s : samples_) n += s.images.empty() ? 0 : 1;
    return n;
}

void LlavaDataset::load_file(int32_t source) {
    const std::string & path = files_[source].json;
    std::ifstream in(path, std::ios::binary);
    if (!in) throw DataError("cannot open dataset file " + path);
    const bool jsonl = fs::path(path).extension() == ".jsonl";
    int64_t index = 0;
    if (jsonl) {
        std::string line;
        int64_t offset = 0, lineno = 0;
        while (std::getline(in, line)) {
            ++lineno;
            size_t len = line.size() + 1;
            if (line.find_first_not_of(" \t\r") != std::string::npos) {
                nlohmann::json rec;
                try {
                    rec = nlohmann::json::parse(line);
                } catch (const nlohmann::json::parse_error & e) {
                    ++records_;
                    bad_.add(path + "#" + std::to_string(index), path + ":" + std::to_string(lineno), "malformed_json",
                             "byte offset " + std::to_string(offset + static_cast<int64_t>(e.byte) - 1) + ": " + e.what());
                    ++index;
                    offset += len;
                    continue;
                }
                add_record(rec, source, index++);
            }
            offset += len;
        }
        return;
    }
    // A top-level array, parsed element by element: each finished record (depth 1) is handed to
    // add_record and then discarded from the DOM.
    bool top_is_array = false;
    auto cb = [&](int depth, nlohmann::json::parse_event_t ev, nlohmann::json & parsed) -> bool {
        if (depth == 0 && ev == nlohmann::json::parse_event_t::array_start) top_is_array = true;
        if (depth == 1 && top_is_array &&
            (ev == nlohmann::json::parse_event_t::object_end || ev == nlohmann::json::parse_event_t::array_end ||
             ev == nlohmann::json::parse_event_t::value)) {
            add_record(parsed, source, index++);
            return false;
        }
        return true;
    };
    nlohmann::json rest;
    try {
        rest = nlohmann::json::parse(in, cb);
    } catch (const nlohmann::json::parse_error & e) {
        throw DataError("malformed JSON in " + path + " at byte offset " + std::to_string(e.byte - 1) + " (0-based; after " +
                        std::to_string(index) + " records): " + e.what());
    }
    if (!top_is_array) throw DataError(path + ": expected a JSON array of LLaVA records at the top level");
}

void LlavaDataset::add_record(const nlohmann::json & rec, int32_t source, int64_t index) {
    ++records_;
    const std::string & path = files_[source].json;
    std::string where = path + "#" + std::to_string(index);
    std::string id = where;
    auto bad = [&](const std::string & kind, const std::string & detail) { bad_.add(id, where, kind, detail); };
    if (!rec.is_object()) return bad("malformed_record", "record is not a JSON object");
    if (rec.contains("id")) {
        const auto & j = rec["id"];
        id = j.is_string() ? j.get<std::string>() : j.dump();
    }
    Sample s;
    s.id = id;
    s.source = source;
    s.record = index;
    if (rec.contains("image") && !rec["image"].is_null()) {
        const auto & im = rec["image"];
        std::vector<std::string> rel;
        if (im.is_string()) rel.push_back(im.get<std::string>());
        else if (im.is_array()) {
            for (const auto & x : im) {
                if (!x.is_string()) return bad("malformed_record", "\"image\" list holds a non-string");
                rel.push_back(x.get<std::string>());
            }
        } else return bad("malformed_record", "\"image\" is neither a string nor a list");
        for (const auto & r : rel) {
            if (r.empty()) return bad("malformed_record", "empty image path");
            s.images.push_back(files_[source].image_root.empty() ? r : (fs::path(files_[source].image_root) / r).string());
        }
    }
    if (!rec.contains("conversations") || !rec["conversations"].is_array() || rec["conversations"].empty())
        return bad("malformed_record", "missing or empty \"conversations\" list");
    for (const auto & t : rec["conversations"]) {
        if (!t.is_object() || !t.contains("from") || !t.contains("value") || !t["from"].is_string() || !t["value"].is_string())
            return bad("malformed_record", "a turn lacks string \"from\"/\"value\"");
        s.turns.push_back({t["from"].get<std::string>(), t["value"].get<std::string>()});
    }
    for (const auto & t : s.turns)
        if (!utf8_valid(t.value)) return bad("non_utf8", "turn text is not valid UTF-8");
    // Roles (MoE-LLaVA preprocess: a leading non-human turn is dropped, then strict alternation).
    std::vector<Turn> turns = s.turns;
    if (turns[0].from != "human") turns.erase(turns.begin());
    if (turns.empty()) return bad("bad_roles", "no human turn");
    for (size_t i = 0; i < turns.size(); ++i) {
        const char * want = i % 2 == 0 ? "human" : "gpt";
        if (turns[i].from != want)
            return bad("bad_roles", "turn " + std::to_string(i) + " is from '" + turns[i].from + "', expected '" + want + "'");
    }
    if (turns.size() % 2 != 0) return bad("bad_roles", "conversation ends with a human turn (no answer to train)");
    for (size_t i = 1; i < turns.size(); i += 2)
        if (turns[i].value.find_first_not_of(" \t\r\n") == std::string::npos)
            return bad("empty_answer", "answer " + std::to_string(i / 2) + " is empty");
    int64_t tags = 0;
    for (const auto & t : turns) tags += count_image_tags(t.value);
    const int64_t n_img = static_cast<int64_t>(s.images.size());
    if (tags > 0 && n_img == 0) return bad("image_tag_without_image", "<image> in the text but no \"image\" field");
    if (n_img > 0 && tags == 0) return bad("image_without_tag", "\"image\" given but no <image> in the text");
    if (tags != n_img)
        return bad("image_count_mismatch", std::to_string(tags) + " <image> tags for " + std::to_string(n_img) + " images");
    if (template_ == "plain") {
        if (n_img != 1 || turns.size() != 2 || count_image_tags(turns[0].value) != 1)
            return bad("plain_shape", "the plain template needs one image and exactly one human + one gpt turn");
    }
    s.turns = std::move(turns);
    int64_t words = 0;
    for (const auto & t : s.turns) {
        std::istringstream ws(t.value);
        for (std::string w; ws >> w;) ++words;
    }
    words = std::max<int64_t>(words, 1);
    s.modality_length = s.images.empty() ? -words : words;
    samples_.push_back(std::move(s));
}

}  // namespace idamoe::data
