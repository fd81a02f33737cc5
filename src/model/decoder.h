// defines: DecoderLayerImpl, DecoderModelImpl, CausalLMImpl (TORCH_MODULE CausalLM), DecoderOutput,
//          KVCache, causal_lm_loss, causal_lm_loss_sum, in_checkpoint_recompute
//
// Qwen2 / StableLM causal LM with parameter names equal to the HF checkpoint keys
// ("model.embed_tokens.weight", "model.layers.{i}.self_attn.q_proj.weight", ..., "lm_head.weight"
// when untied), so io::load_state_strict loads it name for name. Each layer's FFN is a slot
// (model/ffn.h) that the MoE code can replace. Legend: B batch, T time, S keys, D hidden, V vocab.
#pragma once

#include "model/attention.h"
#include "model/ffn.h"
#include "model/hf_config.h"
#include "model/norms.h"

#include <torch/torch.h>

#include <memory>
#include <vector>

namespace idamoe::model {

// What one forward produced. hidden_states follows HF: L+1 entries, [0] the embeddings, [k] the
// output of layer k-1, and the last one the output of the last layer *after* the final norm.
struct DecoderOutput {
    torch::Tensor logits_BTV;
    std::vector<torch::Tensor> hidden_states;  // empty unless asked for
    // Sum of the FFN slots' aux losses (FfnAux::loss) of this forward, undefined if none. Use this
    // rather than each slot's aux()->loss: it stays differentiable under activation checkpointing.
    torch::Tensor aux_loss;
};

// Per-layer keys/values plus the key mask over all cached slots and each row's next position.
struct KVCache {
    std::vector<LayerKV> layers;
    torch::Tensor key_mask_BS;  // bool, true = real token
};

class DecoderLayerImpl : public torch::nn::Module {
public:
    explicit DecoderLayerImpl(const DecoderConfig & c);
    torch::Tensor forward(const torch::Tensor & x_BTD, const torch::Tensor & mask_BT, const torch::Tensor & cos_BTr,
                          const torch::Tensor & sin_BTr, const torch::Tensor & allowed_B1TS, LayerKV * cache = nullptr);

    Norm input_layernorm{nullptr}, post_attention_layernorm{nullptr};
    Attention self_attn{nullptr};
    std::shared_ptr<FfnImpl> mlp;
};
TORCH_MODULE(DecoderLayer);

// The "model." part: embeddings, layers, final norm.
class DecoderModelImpl : public torch::nn::Module {
public:
    explicit DecoderModelImpl(const DecoderConfig & c);
    torch::nn::Embedding embed_tokens{nullptr};
    std::vector<DecoderLayer> layers;
    Norm norm{nullptr};
};
TORCH_MODULE(DecoderModel);

class CausalLMImpl : public torch::nn::Module {
public:
    explicit CausalLMImpl(const DecoderConfig & c);

    torch::Tensor embed(const torch::Tensor & ids_BT);
    // mask_BT: int64 (or bool) [B, T], 1 = real token, may be undefined (all real).
    // Positions are 0..T-1 for every row (HF default; right padding keeps real positions).
    DecoderOutput forward_embeds(const torch::Tensor & x_BTD, const torch::Tensor & mask_BT, bool want_hidden = false);
    DecoderOutput forward(const torch::Tensor & ids_BT, const torch::Tensor & mask_BT, bool want_hidden = false);

    // One step with a KV cache: x_BTD are new tokens at positions pos_BT; new_mask_BT marks which of
    // them are real (undefined = all). Appends to `cache` and returns logits for the new tokens.
    torch::Tensor forward_cached(const torch::Tensor & x_BTD, const torch::Tensor & new_mask_BT,
                                 const torch::Tensor & pos_BT, KVCache & cache);

    void set_ffn(int64_t layer, std::shared_ptr<FfnImpl> ffn);
    std::shared_ptr<FfnImpl> ffn(int64_t layer) const;
    int64_t n_layer() const { return static_cast<int64_t>(model->layers.size()); }
    const DecoderConfig & config() const { return config_; }

    // Activation checkpointing: while training with grad enabled, each layer's activations are
    // dropped after its forward and recomputed in backward.
    void set_checkpointing(bool on) { checkpointing_ = on; }
    bool checkpointing() const { return checkpointing_; }

    // The output projection: lm_head.weight, or embed_tokens.weight when tied.
    torch::Tensor output_weight() const;

    DecoderModel model{nullptr};
    torch::nn::Linear lm_head{nullptr};  // null when tie_word_embeddings

private:
    torch::Tensor run_layers(torch::Tensor h_BTD, const torch::Tensor & mask_BT, const torch::Tensor & pos_BT,
                             const torch::Tensor & allowed_B1TS, KVCache * cache, std::vector<torch::Tensor> * hidden,
                             torch::Tensor * aux_loss);

    DecoderConfig config_;
    bool checkpointing_ = false;
    torch::Tensor anchor_;  // grad-requiring dummy input of checkpointed layers (not a parameter)
};
TORCH_MODULE(CausalLM);

// HF causal-LM loss: logits[:, t] scored against labels[:, t+1]; labels -100 ignored; one mean over
// every kept target of the batch (not a mean of per-row means). Computed in fp32. Zero (with a
// graph) when no target is kept, where HF would return NaN.
torch::Tensor causal_lm_loss(const torch::Tensor & logits_BTV, const torch::Tensor & labels_BT);

// The same as (sum of per-target losses, number of targets), for token-normalised accumulation
// across micro-batches and ranks: loss = sum_all / count_all.
struct LossSum {
    torch::Tensor sum;  // fp32 scalar with graph
    int64_t count = 0;
};
LossSum causal_lm_loss_sum(const torch::Tensor & logits_BTV, const torch::Tensor & labels_BT);

// True while a checkpointed layer is being recomputed in backward: FFN slots with side effects in
// forward (running statistics, EMA updates) should skip them then, since the forward already ran.
bool in_checkpoint_recompute();

}  // namespace idamoe::model
