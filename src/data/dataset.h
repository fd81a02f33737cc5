// defines: Sample, BadSampleLog, DataError, LlavaDataset
//
// LLaVA JSON datasets (moe_llava_protocol.md §4.1): a JSON array (or JSONL, one record per line) of
// {"id", optional "image" (string or list, relative to the entry's image_root), "conversations":
// [{"from": "human"|"gpt", "value": ...}]}. Files are read record by record (SAX-style callback), so
// memory holds the compact Sample list, never the whole JSON document.
//
// Structural problems are found at load time and the record is left out, with a counted report
// naming the file, record index and id: malformed record, roles that do not alternate human/gpt
// (after dropping a leading non-human turn), a conversation ending on a human turn, empty answers,
// non-UTF-8 text, <image> tags without an image or an image without a tag (counts must match), and
// template-specific shape (plain: exactly one human+gpt pair with an image). More than
// max_bad_fraction bad records stops the load with a summary. A malformed JSON file, a missing file
// or a missing image root fails fast with the path (and byte offset).
// `<image>` is kept where it is in the text (MoE-LLaVA behaviour, not LLaVA's move-to-front).
#pragma once

#include "core/config.h"
#include "data/templates.h"

#include <map>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

namespace idamoe::data {

struct DataError : std::runtime_error {
    using std::runtime_error::runtime_error;
};

struct Sample {
    std::string id;                   // the record's id, or "file#index" when it has none
    std::vector<std::string> images;  // full paths (image_root / relative path)
    std::vector<Turn> turns;
    int32_t source = 0;               // index of the dataset file
    int64_t record = 0;               // index of the record in that file
    // LLaVA modality_lengths: whitespace-split words over all turns, positive for image samples,
    // negative for text-only ones (never 0: at least ±1).
    int64_t modality_length = 0;
};

// Thread-safe counted reports of bad samples; the first `keep` are kept verbatim and logged.
class BadSampleLog {
public:
    struct Entry {
        std::string id, where, kind, detail;
    };
    explicit BadSampleLog(size_t keep = 50) : keep_(keep) {}
    void add(const std::string & id, const std::string & where, const std::string & kind, const std::string & detail);
    int64_t count() const;
    std::map<std::string, int64_t> by_kind() const;
    std::vector<Entry> entries() const;
    std::string summary() const;  // "N bad: kind=count, ...; first: ..."

private:
    mutable std::mutex mu_;
    size_t keep_;
    int64_t count_ = 0;
    std::map<std::string, int64_t> kinds_;
    std::vector<Entry> entries_;
};

class LlavaDataset {
public:
    LlavaDataset(const std::vector<core::DatasetEntry> & files, const std::string & template_name,
                 double max_bad_fraction);

    size_t size() const { return samples_.size(); }
    const Sample & at(size_t i) const { return samples_.at(i); }
    const std::vector<Sample> & samples() const { return samples_; }
    const std::string & template_name() const { return template_; }
    const std::vector<core::DatasetEntry> & files() const { return files_; }
    int64_t records_read() const { return records_; }
    const BadSampleLog & bad() const { return bad_; }
    int64_t n_image_samples() const;

private:
    void load_file(int32_t source);
    void add_record(const nlohmann::json & rec, int32_t source, int64_t index);

    std::vector<core::DatasetEntry> files_;
    std::string template_;
    std::vector<Sample> samples_;
    int64_t records_ = 0;
    BadSampleLog bad_;
};

// Counts non-overlapping occurrences of "<image>".
int64_t count_image_tags(const std::string & s);

}  // namespace idamoe::data
