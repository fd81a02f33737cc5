// Greedy KV-cache generation over right-padded batches (see generate.h).

#include "model/generate.h"

namespace idamoe::model {

namespace {

// Row lengths of a right-padded mask; rejects left or interior padding and empty rows.
torch::Tensor right_padded_lengths(const torch::Tensor & mask_BT, int64_t B, int64_t T, const torch::Device & dev) {
    auto opts = torch::TensorOptions().dtype(torch::kInt64).device(dev);
    if (!mask_BT.defined()) return torch::full({B}, T, opts);
    TORCH_CHECK(mask_BT.dim() == 2 && mask_BT.size(0) == B && mask_BT.size(1) == T, "generate: attention mask must be [",
                B, ", ", T, "], got ", mask_BT.sizes());
    const auto m_BT = (mask_BT.to(dev) != 0).to(torch::kInt64);
    const auto len_B = m_BT.sum(1);
    const auto expect_BT = (torch::arange(T, opts).unsqueeze(0) < len_B.unsqueeze(1)).to(torch::kInt64);
    TORCH_CHECK(torch::equal(m_BT, expect_BT), "generate: the attention mask must be right-padded (1s then 0s per row)");
    TORCH_CHECK(len_B.min().item<int64_t>() > 0, "generate: every row needs at least one real token");
    return len_B;
}

// Prefill + n_new greedy steps; returns the new tokens [B, n_new] and their mask.
GenerateResult decode(CausalLM & lm, const torch::Tensor & x_BTD, const torch::Tensor & len_B, int64_t n_new,
                      int64_t eos_id, bool want_next_logits) {
    torch::NoGradGuard no_grad;
    const int64_t B = x_BTD.size(0), T = x_BTD.size(1);
    const auto dev = x_BTD.device();
    auto i64 = torch::TensorOptions().dtype(torch::kInt64).device(dev);
    const auto mask_BT = (torch::arange(T, i64).unsqueeze(0) < len_B.unsqueeze(1)).to(torch::kInt64);

    KVCache cache;
    const auto logits_BTV = lm->forward_cached(x_BTD, mask_BT, torch::arange(T, i64).expand({B, T}), cache);
    // Each row's prediction comes from its own last real token.
    auto last_BV = logits_BTV.gather(1, (len_B - 1).view({B, 1, 1}).expand({B, 1, logits_BTV.size(2)})).squeeze(1);

    GenerateResult r;
    r.ids_BN = torch::zeros({B, n_new}, i64);
    r.mask_BN = torch::zeros({B, n_new}, i64);
    auto done_B = torch::zeros({B}, i64.dtype(torch::kBool));
    for (int64_t step = 0; step < n_new; ++step) {
        auto tok_B = last_BV.argmax(-1);
        const auto real_B = done_B.logical_not();
        tok_B = tok_B.masked_fill(done_B, 0);
        r.ids_BN.select(1, step).copy_(tok_B);
        r.mask_BN.select(1, step).copy_(real_B.to(torch::kInt64));
        if (eos_id >= 0) done_B = done_B | (tok_B == eos_id);
        const bool all_done = eos_id >= 0 && done_B.all().item<bool>();
        if ((step + 1 == n_new && !want_next_logits) || all_done) break;
        // Feed the token at the row's own next position: prompt length + tokens generated so far.
        const auto pos_B1 = (len_B + step).view({B, 1});
        const auto x_B1D = lm->embed(tok_B.view({B, 1}));
        last_BV = lm->forward_cached(x_B1D, real_B.to(torch::kInt64).view({B, 1}), pos_B1, cache).select(1, 0);
        if (step + 1 == n_new) r.next_logits_BV = last_BV;
    }
    return r;
}

}  // namespace

GenerateResult greedy_generate(CausalLM & lm, const torch::Tensor & ids_BT, const torch::Tensor & mask_BT, int64_t n_new,
                               bool want_next_logits) {
    TORCH_CHECK(ids_BT.dim() == 2, "generate: ids must be [B, T], got ", ids_BT.sizes());
    TORCH_CHECK(n_new >= 0, "generate: n_new must be >= 0");
    const int64_t B = ids_BT.size(0), T = ids_BT.size(1);
    const auto dev = lm->output_weight().device();
    const auto ids = ids_BT.to(dev, torch::kInt64);
    const auto len_B = right_padded_lengths(mask_BT, B, T, dev);
    // Padding ids may be anything (even out of vocabulary): embed zeros there, the keys are masked.
    const auto pad_BT = torch::arange(T, ids.options()).unsqueeze(0) >= len_B.unsqueeze(1);
    auto gen = decode(lm, lm->embed(ids.masked_fill(pad_BT, 0)), len_B, n_new, -1, want_next_logits);

    // Row b: its real prompt, then its new tokens, then zeros.
    const auto len_cpu = len_B.cpu();
    const int64_t N = len_cpu.max().item<int64_t>() + n_new;
    GenerateResult r;
    r.ids_BN = torch::zeros({B, N}, ids.options());
    r.mask_BN = torch::zeros({B, N}, ids.options());
    for (int64_t b = 0; b < B; ++b) {
        const int64_t L = len_cpu[b].item<int64_t>();
        r.ids_BN[b].narrow(0, 0, L).copy_(ids[b].narrow(0, 0, L));
        r.ids_BN[b].narrow(0, L, n_new).copy_(gen.ids_BN[b]);
        r.mask_BN[b].narrow(0, 0, L).fill_(1);
        r.mask_BN[b].narrow(0, L, n_new).copy_(gen.mask_BN[b]);
    }
    r.next_logits_BV = gen.next_logits_BV;
    return r;
}

GenerateResult greedy_generate_embeds(CausalLM & lm, const torch::Tensor & embeds_BTD, const torch::Tensor & mask_BT,
                                      int64_t n_new, int64_t eos_id, bool want_next_logits) {
    TORCH_CHECK(embeds_BTD.dim() == 3, "generate: embeddings must be [B, T, D], got ", embeds_BTD.sizes());
    TORCH_CHECK(n_new >= 0, "generate: n_new must be >= 0");
    const auto len_B = right_padded_lengths(mask_BT, embeds_BTD.size(0), embeds_BTD.size(1), embeds_BTD.device());
    return decode(lm, embeds_BTD, len_B, n_new, eos_id, want_next_logits);
}

}  // namespace idamoe::model
