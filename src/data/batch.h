// defines: Batch — what the loader hands the trainer (one micro-batch on one rank)
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <string>
#include <vector>

namespace idamoe::data {

struct Batch {
    torch::Tensor input_ids;       // [B, T] int64; kImageTokenId (-200) at every image-token position
    torch::Tensor attention_mask;  // [B, T] int64; 1 = real token, 0 = right padding
    torch::Tensor labels;          // [B, T] int64; kIgnoreIndex (-100) where not trained (and on padding)
    torch::Tensor images;          // [n_img, 3, H, W] float32, all images in sample order; undefined if none
    std::vector<std::string> sample_ids;
    // Shifted targets the causal loss will score: positions t >= 1 whose label is not -100, summed
    // over rows (labels[:, 0] is never a target after the shift).
    int64_t n_target_tokens = 0;
    // Rows whose sample was reported as bad (kept, labels fully masked): counted per delivered batch,
    // not from the shared BadSampleLog, so samples the workers prefetched but the trainer has not
    // consumed yet do not count (the trainer reports and checkpoints the delivered total).
    int64_t n_bad_samples = 0;
};

}  // namespace idamoe::data
