// defines: ParamKind, classify_param, stage_trains, apply_stage_rules, TrainableSummary
//
// The only place that knows what each stage trains (moe_llava_protocol.md §1, §2, §3.3), by HF
// parameter name:
//   stage 1: projector only (LLaVA tune_mm_mlp_adapter).
//   stage 2: the whole LLM + projector, plus the warm-up routers attached at moe.layers.
//   stage 3: every FFN slot of the LLM (dense FFNs of non-MoE layers too, as MoE-LLaVA's train_modules
//            match them: §3.3 / port checklist item 6), experts, routers, and the projector.
//            Attention, embeddings, norms, lm_head and the vision tower stay frozen.
// train.trainable (substring patterns, like MoE-LLaVA's --train_modules) replaces the stage default.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace idamoe::train {

enum class ParamKind { vision, projector, embed, attention, norm, ffn, expert, router, lm_head, other };
const char * param_kind_name(ParamKind k);

// From the HF/LLaVA name: vision_tower.* -> vision; mm_projector -> projector; inside a decoder layer's
// `mlp.` slot: `experts` -> expert, a dense FFN matrix directly under mlp -> ffn, anything else (router,
// GMM, autoencoder, gate.wg) -> router.
ParamKind classify_param(const std::string & name);

// Whether `stage` trains a parameter of this name by default.
bool stage_trains(int64_t stage, const std::string & name);

struct TrainableSummary {
    struct Count { int64_t trainable = 0, frozen = 0; };
    std::map<std::string, Count> by_kind;      // element counts per ParamKind name
    int64_t trainable = 0, frozen = 0;         // element counts
    int64_t trainable_tensors = 0;
    std::string to_string() const;             // "trainable 1.2M / frozen 3.4M | projector 1.2M/0 | ..."
};

// Sets requires_grad on every parameter of `model` from the stage rules (or from `override_patterns`
// when non-empty: a parameter trains iff its name contains one of them). Throws if nothing would train
// or a pattern matches no parameter (a typo would otherwise silently freeze the run).
TrainableSummary apply_stage_rules(torch::nn::Module & model, int64_t stage,
                                   const std::vector<std::string> & override_patterns = {});

}  // namespace idamoe::train
