// defines: LoadOptions, LoadReport, load_state_strict, module_state, load_causal_lm
//
// Strict name-for-name loading of a checkpoint (TensorMap) into a module whose parameter and
// buffer names equal the checkpoint keys (issue 3: "every checkpoint tensor is consumed and every
// parameter filled, or the error lists missing keys, unexpected keys, and shape mismatches with
// both shapes"). Checkpoint values are converted to each parameter's dtype and device
// (bf16/fp16 files into an fp32 model, or the reverse).
#pragma once

#include "io/safetensors.h"
#include "model/decoder.h"

#include <torch/torch.h>

#include <string>
#include <vector>

namespace idamoe::io {

struct LoadOptions {
    // Checkpoint keys starting with any of these are dropped before matching (e.g. SigLIP's
    // "vision_model.head.", a VLM checkpoint's "model.mm_projector."). Matched against the raw key.
    std::vector<std::string> ignore_prefixes;
    // Removed from checkpoint keys that start with it (after ignore_prefixes), e.g.
    // "model.vision_tower.vision_tower." to load a tower out of a full LLaVA checkpoint.
    std::string strip_prefix;
    // With strip_prefix set: drop (instead of reporting as unexpected) keys without that prefix.
    bool only_stripped = false;
    // Prepended to every checkpoint key after stripping.
    std::string add_prefix;
    // Module parameter/buffer names that may stay unfilled (keep their initial values).
    std::vector<std::string> allow_missing;
    // Module names that are never loaded (e.g. non-persistent buffers such as rotary tables).
    std::vector<std::string> skip_module_prefixes;
};

struct LoadReport {
    std::vector<std::string> loaded;          // module names filled
    std::vector<std::string> ignored;         // raw checkpoint keys dropped by the options
    std::vector<std::string> allowed_missing; // module names left as initialised
};

// Throws std::runtime_error naming `source` (the checkpoint path) and listing every missing key,
// unexpected key and shape mismatch (checkpoint shape vs model shape). Nothing is copied unless
// the whole state matches.
LoadReport load_state_strict(torch::nn::Module & module, const TensorMap & state, const std::string & source,
                             const LoadOptions & options = {});

// The module's parameters and buffers by name (what a checkpoint of it contains), detached.
TensorMap module_state(const torch::nn::Module & module);

// A Qwen2 / StableLM causal LM from a Hugging Face model directory: config.json (model_type checked)
// plus its checkpoint (load_checkpoint_dir), loaded strictly and converted to `dtype`. When the
// embeddings are tied an lm_head.weight in the file is ignored (HF's rule: the embedding is used).
model::CausalLM load_causal_lm(const std::string & dir, torch::ScalarType dtype = torch::kFloat32);

}  // namespace idamoe::io
