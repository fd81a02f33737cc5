// defines: LoaderOptions, SamplerState, plan_epoch, Example, build_example, collate, DataLoader
//
// Sampling (moe_llava_protocol.md §4.3). Per epoch, a deterministic plan of micro-batches of
// batch_size indices is drawn from (seed, epoch) with our own SplitMix64-seeded Fisher-Yates (not
// std:: distributions, whose output differs across standard libraries):
//   * group_by_modality_length: LLaVA's get_modality_length_grouped_indices — per modality, random
//     permutation, megabatches of world_size*grad_accum*batch_size sorted by length (descending) and
//     split greedily into length-balanced micro-batches; megabatches of both modalities shuffled
//     together; the two partial leftovers merged into one final (mixed) megabatch. Every optimizer
//     step is then single-modality except the last one.
//   * otherwise: one random permutation.
// The flat order is cut into micro-batches of batch_size and dealt round-robin to ranks (micro-batch
// k → rank k % world_size, as HF Accelerate shards). Every rank gets floor(n_micro / world_size)
// micro-batches; the remainder (< world_size micro-batches) is skipped that epoch.
// The position (seed, epoch, offset = micro-batches delivered in this epoch) is saved/restored as
// JSON; after restore the next batch is exactly the one that would have come next.
//
// Example building: template → expand each image placeholder to image_tokens copies → truncate to
// max_length. Truncation rule (a deliberate deviation from MoE-LLaVA, which cuts text ids at 2048
// before expansion and so can exceed 2048 embeddings): cut at max_length tokens after expansion; if
// the cut falls inside an image's run of placeholder tokens, cut before that run instead, so an image
// is either whole or absent (its file is then not decoded). A sample left without trained tokens
// by truncation is reported (kind "truncated_no_target").
// Runtime failures (an image that does not decode, a tokenization mismatch) keep the row so every
// rank does the same number of steps, but mask all its labels (zero loss; a failed image is replaced
// by blank_image), and are reported and counted. More than max_bad_fraction bad samples among those
// built so far (after the first 200) stops the loader with a summary.
#pragma once

#include "data/batch.h"
#include "data/dataset.h"
#include "data/images.h"

#include <nlohmann/json.hpp>

#include <condition_variable>
#include <exception>
#include <map>
#include <memory>
#include <thread>

namespace idamoe::data {

struct LoaderOptions {
    int64_t batch_size = 4;          // per rank, per micro-step
    int64_t grad_accum = 1;
    int64_t world_size = 1;
    int64_t rank = 0;
    int64_t num_workers = 2;         // 0 = build batches in the calling thread
    int64_t prefetch = 4;            // batches built ahead of the trainer
    int64_t max_length = 2048;       // after image expansion
    int64_t image_tokens = 576;      // LLM tokens per image (vision tower); 0 = text-only run
    bool group_by_modality = true;
    uint64_t seed = 42;
    double max_bad_fraction = 0.05;
    ImageProcessorConfig image;      // how images become pixel tensors
    bool load_images = true;         // false: skip decoding (inspection), images stay undefined
};

struct SamplerState {
    uint64_t seed = 0;
    int64_t epoch = 0;
    int64_t offset = 0;  // micro-batches already delivered in this epoch on this rank
};

// This rank's micro-batches for one epoch (indices into the dataset).
std::vector<std::vector<int64_t>> plan_epoch(const std::vector<int64_t> & modality_lengths, const LoaderOptions & opt,
                                             int64_t epoch);

struct Example {
    std::string id;
    std::vector<int64_t> input_ids, labels;  // expanded and truncated
    std::vector<std::string> image_paths;    // the images kept after truncation
    std::vector<torch::Tensor> images;       // [3, H, W] each (empty when not loaded)
    bool masked = false;                     // labels fully masked because of a reported problem
    bool bad = false;                        // reported to the BadSampleLog (masked, or no target left)
};

// Builds one example; problems are reported to `bad` (id, file#record, kind, detail).
Example build_example(const LlavaDataset & ds, size_t index, const Tokenizer & tok, const LoaderOptions & opt,
                      BadSampleLog & bad);
// Right-pads into a Batch (pad id for input_ids, 0 for attention_mask, -100 for labels).
Batch collate(std::vector<Example> & examples, int64_t pad_id);

class DataLoader {
public:
    DataLoader(std::shared_ptr<const LlavaDataset> ds, std::shared_ptr<const Tokenizer> tok, LoaderOptions opt);
    ~DataLoader();
    DataLoader(const DataLoader &) = delete;
    DataLoader & operator=(const DataLoader &) = delete;

    // The next micro-batch; rolls over into the next epoch at the end of one. Throws DataError when
    // the bad-sample budget is exceeded, or rethrows a worker's exception.
    Batch next();
    int64_t batches_per_epoch() const;
    SamplerState position() const;  // of the next batch next() returns
    nlohmann::json state() const;   // position + the settings it is only valid for
    void load_state(const nlohmann::json & j);  // throws DataError when the settings differ
    const BadSampleLog & runtime_bad() const { return bad_; }
    int64_t samples_built() const;

private:
    struct Slot {
        bool done = false;
        Batch batch;
        std::exception_ptr error;
    };
    std::shared_ptr<const std::vector<std::vector<int64_t>>> plan(int64_t epoch);
    Batch build(int64_t seq);
    std::pair<int64_t, int64_t> locate(int64_t seq);  // seq → (epoch, index in epoch)
    void start_workers();
    void stop_workers();
    void worker_loop();

    std::shared_ptr<const LlavaDataset> ds_;
    std::shared_ptr<const Tokenizer> tok_;
    LoaderOptions opt_;
    std::vector<int64_t> lengths_;
    int64_t per_epoch_ = 0;
    mutable BadSampleLog bad_;

    mutable std::mutex mu_;
    std::condition_variable cv_;
    std::map<int64_t, std::shared_ptr<const std::vector<std::vector<int64_t>>>> plans_;
    SamplerState start_;       // position of seq 0
    int64_t delivered_ = 0;    // seqs handed to the caller
    int64_t claimed_ = 0;      // seqs taken by workers
    std::map<int64_t, Slot> slots_;
    bool stop_ = false;
    int64_t built_samples_ = 0;
    std::vector<std::thread> workers_;
};

}  // namespace idamoe::data
