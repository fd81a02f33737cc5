// defines: export_hf_dir, resolve_init_dir
//
// A finished stage is exported as a Hugging Face-style folder <output_dir>/hf/ that the next stage (and
// any HF-style loader) reads: config.json (the base LLM config plus an "idamoe" block with the stage,
// MoE/router settings and the vision tower reference), model.safetensors or model-0000i-of-0000n shards +
// model.safetensors.index.json, and the tokenizer files copied from the base model. Written into hf.tmp/
// then renamed, so a half-written export is never mistaken for a finished one.
#pragma once

#include "io/safetensors.h"

#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>

namespace idamoe::train {

// tokenizer_src_dir: a model folder (its tokenizer files are copied) or one tokenizer file (copied as is).
// Returns the folder written. shard_bytes bounds each shard (a tensor larger than it gets its own shard).
std::string export_hf_dir(const std::string & out_dir, const io::TensorMap & weights, const nlohmann::json & config_json,
                          const std::string & tokenizer_src_dir, int64_t shard_bytes = int64_t{2} << 30);

// train.init_from may name a previous run's output_dir (its hf/ export is used) or an HF folder directly.
// Throws std::runtime_error saying what was looked for when neither holds a config.json.
std::string resolve_init_dir(const std::string & init_from);

}  // namespace idamoe::train
