// Qwen2 / StableLM decoder (see decoder.h). Forward per HF modeling_qwen2.py / modeling_stablelm.py:
//   h = embed(ids)
//   per layer: h = h + o_proj(attn(norm_in(h)));  h = h + mlp(norm_post(h))
//   logits = lm_head(norm(h))   (tied: embed_tokens.weight)
// Legend: B batch, T new tokens, S keys (cached + new), D hidden, V vocab, r rotary width.

#include "model/decoder.h"

#include "model/mlp.h"
#include "model/rope.h"

#include <torch/csrc/autograd/custom_function.h>

#include <stdexcept>

namespace idamoe::model {

namespace {

thread_local bool t_recomputing = false;

struct RecomputeScope {
    bool prev;
    RecomputeScope() : prev(t_recomputing) { t_recomputing = true; }
    ~RecomputeScope() { t_recomputing = prev; }
};

torch::Tensor ffn_aux_loss(const FfnImpl & ffn) {
    const FfnAux * aux = ffn.aux();
    return aux && aux->loss.defined() ? aux->loss : torch::Tensor();
}

// A custom Function's tensor inputs must be defined: an absent mask travels as an empty 1-D tensor.
torch::Tensor to_slot(const torch::Tensor & mask_BT) { return mask_BT.defined() ? mask_BT : torch::empty({0}); }
torch::Tensor from_slot(const torch::Tensor & t) { return t.dim() == 1 && t.numel() == 0 ? torch::Tensor() : t; }

// LibTorch has no torch.utils.checkpoint: this is its reentrant variant. forward runs the layer
// without a graph (the Function machinery disables grad mode) and keeps only its inputs; backward
// reruns the layer with grad enabled and backpropagates through the rerun, which accumulates the
// layer's parameter gradients and yields the input gradient. `anchor` is a grad-requiring dummy so
// the node is recorded even when the layer input itself needs no gradient (frozen embeddings).
// Outputs: the layer output and the FFN slot's aux loss (zero when it has none).
struct CheckpointedLayer : torch::autograd::Function<CheckpointedLayer> {
    static torch::autograd::variable_list forward(torch::autograd::AutogradContext * ctx, const torch::Tensor & x_BTD,
                                                  const torch::Tensor & anchor, const torch::Tensor & mask_BT,
                                                  const torch::Tensor & cos_BTr, const torch::Tensor & sin_BTr,
                                                  const torch::Tensor & allowed_B1TS, DecoderLayerImpl * layer) {
        (void)anchor;
        auto y_BTD = layer->forward(x_BTD, from_slot(mask_BT), cos_BTr, sin_BTr, allowed_B1TS);
        auto aux = ffn_aux_loss(*layer->mlp);
        ctx->saved_data["layer"] = reinterpret_cast<int64_t>(layer);
        ctx->saved_data["has_aux"] = aux.defined();
        ctx->saved_data["x_requires_grad"] = x_BTD.requires_grad();
        ctx->save_for_backward({x_BTD, mask_BT, cos_BTr, sin_BTr, allowed_B1TS});
        if (!aux.defined()) aux = torch::zeros({}, x_BTD.options().dtype(torch::kFloat32));
        return {y_BTD, aux.detach()};
    }

    static torch::autograd::variable_list backward(torch::autograd::AutogradContext * ctx,
                                                   torch::autograd::variable_list grads) {
        auto saved = ctx->get_saved_variables();
        auto * layer = reinterpret_cast<DecoderLayerImpl *>(ctx->saved_data["layer"].toInt());
        auto x_BTD = saved[0].detach().requires_grad_(true);
        {
            torch::AutoGradMode grad_on(true);
            RecomputeScope recompute;
            auto y_BTD = layer->forward(x_BTD, from_slot(saved[1]), saved[2], saved[3], saved[4]);
            std::vector<torch::Tensor> outs{y_BTD}, outs_grad{grads[0]};
            if (ctx->saved_data["has_aux"].toBool()) {
                auto aux = ffn_aux_loss(*layer->mlp);
                TORCH_CHECK(aux.defined(), "checkpoint recompute: the FFN slot produced no aux loss this time");
                outs.push_back(aux);
                outs_grad.push_back(grads[1].to(aux.scalar_type()));
            }
            torch::autograd::backward(outs, outs_grad);
        }
        torch::Tensor gx = ctx->saved_data["x_requires_grad"].toBool() ? x_BTD.grad() : torch::Tensor();
        return {gx, torch::Tensor(), torch::Tensor(), torch::Tensor(), torch::Tensor(), torch::Tensor(), torch::Tensor()};
    }
};

// bool [B, 1, T, S]: query t (absolute slot past+t) may see key s <= past+t that is a real token.
torch::Tensor allowed_mask(const torch::Tensor & key_mask_BS, int64_t T) {
    const int64_t S = key_mask_BS.size(1), past = S - T;
    auto opts = torch::TensorOptions().dtype(torch::kInt64).device(key_mask_BS.device());
    const auto q_T1 = torch::arange(past, S, opts).unsqueeze(1);
    const auto k_1S = torch::arange(0, S, opts).unsqueeze(0);
    const auto causal_TS = k_1S <= q_T1;
    return causal_TS.unsqueeze(0).unsqueeze(0) & key_mask_BS.unsqueeze(1).unsqueeze(1);
}

torch::Tensor as_bool_mask(const torch::Tensor & mask_BT, int64_t B, int64_t T, const torch::Device & dev) {
    if (!mask_BT.defined()) return torch::ones({B, T}, torch::TensorOptions().dtype(torch::kBool).device(dev));
    TORCH_CHECK(mask_BT.dim() == 2 && mask_BT.size(0) == B && mask_BT.size(1) == T, "attention mask must be [", B, ", ",
                T, "], got ", mask_BT.sizes());
    return mask_BT.to(dev) != 0;
}

}  // namespace

bool in_checkpoint_recompute() { return t_recomputing; }

// ---------------------------------------------------------------------------------------------

DecoderLayerImpl::DecoderLayerImpl(const DecoderConfig & c) {
    input_layernorm = register_module("input_layernorm", Norm(c.norm, c.hidden_size, c.norm_eps));
    self_attn = register_module("self_attn", Attention(c));
    post_attention_layernorm = register_module("post_attention_layernorm", Norm(c.norm, c.hidden_size, c.norm_eps));
    mlp = register_module("mlp", std::make_shared<SwiGluMlpImpl>(c.hidden_size, c.intermediate_size));
}

torch::Tensor DecoderLayerImpl::forward(const torch::Tensor & x_BTD, const torch::Tensor & mask_BT,
                                        const torch::Tensor & cos_BTr, const torch::Tensor & sin_BTr,
                                        const torch::Tensor & allowed_B1TS, LayerKV * cache) {
    auto h_BTD = x_BTD + self_attn(input_layernorm(x_BTD), cos_BTr, sin_BTr, allowed_B1TS, cache);
    return h_BTD + mlp->forward(post_attention_layernorm(h_BTD), mask_BT);
}

DecoderModelImpl::DecoderModelImpl(const DecoderConfig & c) {
    // HF builds nn.Embedding(vocab, hidden, padding_idx=pad_token_id): that row gets no gradient.
    auto opts = torch::nn::EmbeddingOptions(c.vocab_size, c.hidden_size);
    if (c.pad_token_id >= 0 && c.pad_token_id < c.vocab_size) opts.padding_idx(c.pad_token_id);
    embed_tokens = register_module("embed_tokens", torch::nn::Embedding(opts));
    auto list = register_module("layers", torch::nn::ModuleList());
    for (int64_t i = 0; i < c.num_layers; ++i) {
        layers.emplace_back(c);
        list->push_back(layers.back());
    }
    norm = register_module("norm", Norm(c.norm, c.hidden_size, c.norm_eps));
}

CausalLMImpl::CausalLMImpl(const DecoderConfig & c) : config_(c) {
    model = register_module("model", DecoderModel(c));
    if (!c.tie_word_embeddings)
        lm_head = register_module("lm_head", torch::nn::Linear(torch::nn::LinearOptions(c.hidden_size, c.vocab_size).bias(false)));
}

torch::Tensor CausalLMImpl::output_weight() const {
    return lm_head ? lm_head->weight : model->embed_tokens->weight;
}

torch::Tensor CausalLMImpl::embed(const torch::Tensor & ids_BT) {
    if (ids_BT.device().is_cpu() && ids_BT.numel() > 0) {  // on GPU a bad id would be a device assert
        const auto lo = ids_BT.min().item<int64_t>(), hi = ids_BT.max().item<int64_t>();
        TORCH_CHECK(lo >= 0 && hi < config_.vocab_size, "token ids must be in [0, ", config_.vocab_size, "), got [", lo,
                    ", ", hi, "]");
    }
    return model->embed_tokens(ids_BT);
}

torch::Tensor CausalLMImpl::run_layers(torch::Tensor h_BTD, const torch::Tensor & mask_BT, const torch::Tensor & pos_BT,
                                       const torch::Tensor & allowed_B1TS, KVCache * cache,
                                       std::vector<torch::Tensor> * hidden, torch::Tensor * aux_loss) {
    auto [cos_BTr, sin_BTr] = rope_cos_sin(pos_BT, config_.rotary_dim(), config_.rope_theta, h_BTD.scalar_type());
    const bool recompute = checkpointing_ && is_training() && torch::GradMode::is_enabled() && !cache;
    if (recompute && !anchor_.defined()) anchor_ = torch::zeros({}, torch::requires_grad());
    if (cache && cache->layers.empty()) cache->layers.resize(model->layers.size());
    for (size_t i = 0; i < model->layers.size(); ++i) {
        if (hidden) hidden->push_back(h_BTD);
        auto & layer = model->layers[i];
        torch::Tensor aux;
        if (recompute) {
            auto outs = CheckpointedLayer::apply(h_BTD, anchor_, to_slot(mask_BT), cos_BTr, sin_BTr, allowed_B1TS, layer.get());
            h_BTD = outs[0];
            if (ffn_aux_loss(*layer->mlp).defined()) aux = outs[1];
        } else {
            h_BTD = layer->forward(h_BTD, mask_BT, cos_BTr, sin_BTr, allowed_B1TS, cache ? &cache->layers[i] : nullptr);
            aux = ffn_aux_loss(*layer->mlp);
        }
        if (aux.defined()) *aux_loss = aux_loss->defined() ? *aux_loss + aux : aux;
    }
    h_BTD = model->norm(h_BTD);
    if (hidden) hidden->push_back(h_BTD);
    return h_BTD;
}

DecoderOutput CausalLMImpl::forward_embeds(const torch::Tensor & x_BTD, const torch::Tensor & mask_BT, bool want_hidden) {
    TORCH_CHECK(x_BTD.dim() == 3 && x_BTD.size(2) == config_.hidden_size, "input embeddings must be [B, T, ",
                config_.hidden_size, "], got ", x_BTD.sizes());
    const int64_t B = x_BTD.size(0), T = x_BTD.size(1);
    const auto key_mask_BS = as_bool_mask(mask_BT, B, T, x_BTD.device());
    const auto pos_BT = torch::arange(T, torch::TensorOptions().dtype(torch::kInt64).device(x_BTD.device())).expand({B, T});
    DecoderOutput out;
    const auto h_BTD = run_layers(x_BTD, mask_BT, pos_BT, allowed_mask(key_mask_BS, T), nullptr,
                                  want_hidden ? &out.hidden_states : nullptr, &out.aux_loss);
    out.logits_BTV = torch::nn::functional::linear(h_BTD, output_weight());
    return out;
}

DecoderOutput CausalLMImpl::forward(const torch::Tensor & ids_BT, const torch::Tensor & mask_BT, bool want_hidden) {
    return forward_embeds(embed(ids_BT), mask_BT, want_hidden);
}

torch::Tensor CausalLMImpl::forward_cached(const torch::Tensor & x_BTD, const torch::Tensor & new_mask_BT,
                                           const torch::Tensor & pos_BT, KVCache & cache) {
    const int64_t B = x_BTD.size(0), T = x_BTD.size(1);
    const auto new_keys_BT = as_bool_mask(new_mask_BT, B, T, x_BTD.device());
    cache.key_mask_BS = cache.key_mask_BS.defined() ? torch::cat({cache.key_mask_BS, new_keys_BT}, 1) : new_keys_BT;
    torch::Tensor aux;
    const auto h_BTD = run_layers(x_BTD, new_mask_BT, pos_BT.to(x_BTD.device()), allowed_mask(cache.key_mask_BS, T),
                                  &cache, nullptr, &aux);
    return torch::nn::functional::linear(h_BTD, output_weight());
}

void CausalLMImpl::set_ffn(int64_t layer, std::shared_ptr<FfnImpl> ffn) {
    TORCH_CHECK(layer >= 0 && layer < n_layer(), "set_ffn: layer ", layer, " out of range [0, ", n_layer(), ")");
    TORCH_CHECK(ffn, "set_ffn: null FFN for layer ", layer);
    auto & l = model->layers[static_cast<size_t>(layer)];
    l->mlp = l->replace_module("mlp", ffn);
}

std::shared_ptr<FfnImpl> CausalLMImpl::ffn(int64_t layer) const {
    TORCH_CHECK(layer >= 0 && layer < n_layer(), "ffn: layer ", layer, " out of range [0, ", n_layer(), ")");
    return model->layers[static_cast<size_t>(layer)]->mlp;
}

// ---------------------------------------------------------------------------------------------

LossSum causal_lm_loss_sum(const torch::Tensor & logits_BTV, const torch::Tensor & labels_BT) {
    TORCH_CHECK(logits_BTV.dim() == 3 && labels_BT.dim() == 2 && logits_BTV.size(0) == labels_BT.size(0) &&
                    logits_BTV.size(1) == labels_BT.size(1),
                "causal_lm_loss: logits ", logits_BTV.sizes(), " and labels ", labels_BT.sizes(), " do not match");
    const int64_t T = logits_BTV.size(1), V = logits_BTV.size(2);
    LossSum r;
    if (T < 2) {
        r.sum = logits_BTV.sum().to(torch::kFloat32) * 0.0;
        return r;
    }
    // HF drops the last position's logits (logits[:, :-1].contiguous(): a copy of nearly all logits, and a
    // zero-filled buffer in backward). Same sum: keep every position and give the last one no target.
    const auto logits_NV = logits_BTV.to(torch::kFloat32).reshape({-1, V});
    const auto next_BT = labels_BT.to(logits_BTV.device(), torch::kInt64);
    const auto next_N = torch::cat({next_BT.narrow(1, 1, T - 1), torch::full({next_BT.size(0), 1}, -100, next_BT.options())}, 1)
                            .reshape({-1});
    r.sum = torch::nn::functional::cross_entropy(
        logits_NV, next_N,
        torch::nn::functional::CrossEntropyFuncOptions().ignore_index(-100).reduction(torch::kSum));
    r.count = labels_BT.narrow(1, 1, T - 1).ne(-100).sum().item<int64_t>();
    return r;
}

torch::Tensor causal_lm_loss(const torch::Tensor & logits_BTV, const torch::Tensor & labels_BT) {
    const auto s = causal_lm_loss_sum(logits_BTV, labels_BT);
    return s.count > 0 ? s.sum / static_cast<double>(s.count) : s.sum * 0.0;
}

}  // namespace idamoe::model
