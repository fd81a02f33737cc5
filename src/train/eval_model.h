// defines: EvalRunOptions, run_model_eval — `idamoe-train eval`: a stage export answers a question file
//
// Loads a finished stage (its hf/ export, as the next stage would), answers each question of a LLaVA
// question JSONL greedily with the KV cache, and writes answers.jsonl (LLaVA format), scores.json
// (exact match per category when the questions carry answers) and routing.jsonl (token x expert
// gates of the first questions, for the routing heatmap).
#pragma once

#include "core/config.h"
#include "train/eval.h"

#include <map>
#include <string>

namespace idamoe::train {

struct EvalRunOptions {
    std::string checkpoint;       // a stage output_dir or its hf/ export
    std::string questions;        // LLaVA question JSONL
    std::string image_root;       // folder the questions' image paths are relative to
    std::string out_dir;          // answers.jsonl, scores.json, routing.jsonl go here
    int64_t limit = 0;            // first N questions (0 = all)
    int64_t max_new_tokens = 8;
    int64_t routing_samples = 4;  // questions whose per-token routing is dumped
    std::string model_id;         // answers' model_id ("" = the checkpoint folder name)
};

// Throws std::runtime_error naming the file for a checkpoint without a tokenizer, a question file
// that does not parse, or a question whose image is missing.
std::map<std::string, CategoryScore> run_model_eval(const core::Config & cfg, const EvalRunOptions & opt);

}  // namespace idamoe::train
