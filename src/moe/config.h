// defines: RouterKind, MoeLayerConfig, parse_router_kind, router_kind_name, validate
//
// One plain config struct for one MoE layer (or one stage-2 router warm-up slot). The trainer fills it
// from core::MoeConfig plus the decoder's shapes; nothing here knows about YAML or files.
#pragma once

#include <cstdint>
#include <string>

#include "core/config.h"

namespace idamoe::moe {

enum class RouterKind {
    kIda,        // IDA-MoE GMM router, arXiv:2510.16448 §4
    kLinearAux,  // MoE-LLaVA / GShard top-k softmax router + balance loss (IDA-MoE eq. 9-11)
    kStMoe,      // linear_aux + router z-loss, ST-MoE (Zoph et al. 2022, arXiv:2202.08906, eq. 5)
    kXMoe,       // low-dim cosine router, X-MoE (Chi et al. 2022, arXiv:2204.09179)
    kAuxFree,    // per-expert bias from load, no aux loss: Wang et al. 2024 (arXiv:2408.15664), DeepSeek-V3
    kDeepSeek,   // shared expert(s) + routed experts, aux coef 0.001: DeepSeekMoE (arXiv:2401.06066)
};

// "ida" | "linear_aux" | "st_moe" | "xmoe" | "auxfree" | "deepseek"; throws std::invalid_argument otherwise.
RouterKind parse_router_kind(const std::string & name);
std::string router_kind_name(RouterKind kind);

struct MoeLayerConfig {
    int64_t layer_index = -1;          // decoder layer this slot sits in (for error messages and the RNG stream)
    int64_t d_model = 0;               // D
    int64_t d_ff = 0;                  // F (each expert's intermediate size = the dense FFN's)
    std::string router = "ida";        // see RouterKind
    int64_t num_experts = 4;           // N; MoE-LLaVA uses 4 experts, top-2 (protocol §3)
    int64_t top_k = 2;                 // k
    // IDA-MoE router (arXiv:2510.16448 §4, §5.1: latent 32, 16 components per expert, alpha = beta = 0.01)
    int64_t latent_dim = 32;           // L
    int64_t centers_per_expert = 16;   // M
    double alpha = 0.01;               // weight of L_AE (eq. 24)
    double beta = 0.01;                // weight of sum_j (L_GMM,j + L_react,j) (eq. 24)
    bool reactivation = true;          // eq. 22-23, training only
    double variance_floor = 1e-4;      // var = softplus(var_raw) + floor: keeps 1/var and log var finite
    int64_t ae_hidden = 256;           // autoencoder hidden width H
    bool distinct_experts = true;      // rank j chooses among experts not chosen by ranks < j (else may repeat)
    // Dispatch
    double capacity_factor = 0.0;      // 0 = dropless; > 0: DeepSpeed capacity ceil(S/N * cf * k), drop overflow
    // Baselines
    double aux_coef = 0.01;            // balance-loss coefficient (MoE-LLaVA 0.01; DeepSeekMoE uses 0.001)
    double z_loss_coef = 0.001;        // st_moe router z-loss (ST-MoE §3.2 uses 1e-3)
    int64_t num_shared_experts = 1;    // deepseek
    double bias_update_rate = 0.001;   // auxfree gamma (DeepSeek-V3 §2.1.2 uses 0.001)
    int64_t xmoe_dim = 16;             // X-MoE routing dimension (X-MoE §3 uses 16)
    bool gumbel_second_expert = true;  // linear routers: DeepSpeed top2gating samples rank 2 with Gumbel noise
                                       // in training (protocol §3.4); eval is always deterministic here
    uint64_t seed = 0;                 // init and reactivation RNG (mixed with layer_index)
};

RouterKind router_kind(const MoeLayerConfig & cfg);

// The trainer's conversion: core::MoeConfig (YAML `moe:` section) + the decoder's shapes -> one layer's config.
// Fields core::MoeConfig does not carry (xmoe_dim, gumbel_second_expert) keep their defaults.
MoeLayerConfig layer_config(const core::MoeConfig & moe, int64_t layer_index, int64_t d_model, int64_t d_ff,
                            uint64_t seed);

// Throws std::invalid_argument naming the layer and the offending field.
void validate(const MoeLayerConfig & cfg);

}  // namespace idamoe::moe
