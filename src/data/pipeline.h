// defines: tokenizer_path, image_tokens_for, loader_options, inspect_samples
//
// Glue from the typed config (core::Config) to the data module, for idamoe-train and its
// --inspect-data N flag.
#pragma once

#include "core/config.h"
#include "data/loader.h"

#include <ostream>

namespace idamoe::data {

// data.tokenizer, or model.llm_path when that is empty.
std::string tokenizer_path(const core::Config & cfg);
// LLM tokens per image for vision.path / vision.select_feature; 0 when vision.path is empty.
int64_t image_tokens_for(const core::Config & cfg);
// Loader options from data.*, train.seed and vision.*; rank / world_size from the launcher.
LoaderOptions loader_options(const core::Config & cfg, int64_t rank, int64_t world_size);

// Prints the first N samples (file order) tokenized with the configured template: each sample's id,
// lengths and its text, with trained (label) spans in ⟦...⟧ and image runs as <image×N>; then the
// number of tokenization mismatches and other problems among them, and the load-time report.
// Images are not decoded (only checked to exist). Returns the number of mismatches.
int64_t inspect_samples(const core::Config & cfg, int64_t n, std::ostream & os);

}  // namespace idamoe::data
