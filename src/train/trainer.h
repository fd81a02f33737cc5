// defines: StageRun, run_stage, build_stage_model, EXIT_* codes
//
// One stage of the MoE-LLaVA protocol from a resolved config (moe_llava_protocol.md §1-3):
//   stage 1: decoder from model.llm_path, vision tower from vision.path, fresh projector;
//   stage 2: the stage-1 export (train.init_from) + IDA-MoE router warm-up slots at moe.layers;
//   stage 3: the stage-2 export, its FFNs at moe.layers upcycled into moe.num_experts experts
//            (taking over the warmed-up routers).
// Stage rules (train/stages.h) freeze/unfreeze; train/loop.h runs the steps; the finished stage is
// exported to <output_dir>/hf (train/export.h), which the next stage's train.init_from names.
#pragma once

#include "core/config.h"
#include "data/batch.h"
#include "model/llava.h"

#include <nlohmann/json.hpp>

#include <memory>
#include <string>
#include <vector>

namespace idamoe::train {

// Exit codes of idamoe-train.
constexpr int kExitOk = 0;
constexpr int kExitRuntime = 1;     // I/O, model or communication failure
constexpr int kExitConfig = 2;      // bad config / inputs / incompatible resume
constexpr int kExitNonFinite = 4;   // non-finite guard gave up (checkpoint intact)

struct StageRun {
    int exit_code = kExitOk;
    int64_t end_step = 0, total_steps = 0;
    std::string stop_reason;        // done | stop_after | signal
    std::string export_dir;         // set when the stage finished and was exported
    std::vector<double> losses;
    int64_t skipped_samples = 0;    // bad samples (masked rows) over the whole run, all ranks
};

// A LLaVA model as a stage uses it, with the FFN slots it carries.
struct StageModel {
    model::LlavaModel llava{nullptr};
    model::DecoderConfig dc;
    std::vector<int64_t> router_layers;   // stage-2 router warm-up slots
    std::vector<int64_t> moe_layers;      // stage-3 MoE slots
    core::MoeConfig moe_cfg;              // what the slots were built with
    nlohmann::json base_config;           // the LLM's config.json without our blocks
    std::string init_dir;                 // the export it was loaded from ("" for stage 1)
    int64_t from_stage = 0;               // stage that wrote init_dir
};

// The model for cfg.train.stage before training: stage 1 from model.llm_path (+ vision.path, fresh
// projector); stages 2/3 from the previous stage's export (train.init_from), checked to be that stage's,
// then router warm-up slots (stage 2, router ida) or upcycling (stage 3) at moe.layers.
// Throws core::ConfigError naming the stage it needs when init_from holds another stage's output.
StageModel build_stage_model(const core::Config & cfg);
// Any stage's export (<output_dir>/hf) with its slots rebuilt and every tensor loaded strictly.
StageModel load_stage_export(const std::string & dir, const core::Config & cfg);

// Where micro-batches come from: the LLaVA data loader, or (tests, bench) a synthetic source.
class BatchSource {
public:
    virtual ~BatchSource() = default;
    virtual data::Batch next() = 0;
    virtual double epoch() const = 0;
    virtual nlohmann::json state() const = 0;
    virtual void load_state(const nlohmann::json & state) = 0;
    virtual int64_t num_samples() const = 0;   // per epoch, all ranks (for the schedule length)
    // What the loader reported as bad on this rank (kinds, first examples); "" when nothing was.
    virtual std::string bad_sample_summary() const { return ""; }
};

// Runs (or resumes: resume = "", "auto" or a checkpoint folder) the stage cfg.train.stage names.
// Throws core::ConfigError for configuration problems; other failures as std::exception.
// `source` = nullptr builds the data loader from data.*; tests pass a synthetic one.
StageRun run_stage(const core::Config & cfg, const std::string & resume, std::unique_ptr<BatchSource> source = nullptr);

}  // namespace idamoe::train
