// defines: GenerateResult, greedy_generate, greedy_generate_embeds
//
// Greedy decoding with a KV cache. Batches are right-padded (mask 1 = real token, then 0s); each
// row continues from its own last real token at its own next position, so a padded row produces
// exactly what it would alone. Padding keys stay in the cache but are masked out.
// Legend: B batch, T prompt length, N output length, V vocab, D hidden.
#pragma once

#include "model/decoder.h"

#include <torch/torch.h>

namespace idamoe::model {

struct GenerateResult {
    torch::Tensor ids_BN;       // int64, rows right-padded with 0
    torch::Tensor mask_BN;      // int64, 1 where ids_BN holds a real token
    torch::Tensor next_logits_BV;  // with want_next_logits: logits of one more cached step fed the last token
};

// Returns each row's real prompt tokens followed by its n_new greedy tokens (argmax, first index on
// ties, no EOS stop), right-padded with 0 to N = max prompt length + n_new.
GenerateResult greedy_generate(CausalLM & lm, const torch::Tensor & ids_BT, const torch::Tensor & mask_BT, int64_t n_new,
                               bool want_next_logits = false);

// From input embeddings (a LLaVA prefix with image features spliced in). Returns only the new
// tokens [B, n_new]; with eos_id >= 0 a row stops after emitting EOS (EOS kept, mask 1), the rest
// of the row is 0 with mask 0, and decoding ends early once every row has stopped.
GenerateResult greedy_generate_embeds(CausalLM & lm, const torch::Tensor & embeds_BTD, const torch::Tensor & mask_BT,
                                      int64_t n_new, int64_t eos_id = -1, bool want_next_logits = false);

}  // namespace idamoe::model
