// defines: DecoderConfig, decoder_config_from_json, decoder_parameter_count
//
// The decoder's plain config struct, filled from a Hugging Face config.json. Two families are
// supported (docs/architectures.md §3, §4): model_type "qwen2" (RMSNorm, full rotary, GQA, tied
// embeddings in the 1.5B) and "stablelm" / legacy "stablelm_epoch" (LayerNorm with bias, partial
// rotary, untied lm_head). Anything else is rejected with the file and the field named.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>

namespace idamoe::model {

enum class NormKind { RMSNorm, LayerNorm };

struct DecoderConfig {
    std::string model_type;             // "qwen2" or "stablelm" (stablelm_epoch is normalised to stablelm)
    int64_t vocab_size = 0;
    int64_t hidden_size = 0;
    int64_t intermediate_size = 0;
    int64_t num_layers = 0;
    int64_t num_heads = 0;
    int64_t num_kv_heads = 0;
    int64_t head_dim = 0;                // hidden_size / num_heads
    NormKind norm = NormKind::RMSNorm;
    double norm_eps = 1e-6;
    double rope_theta = 10000.0;
    double partial_rotary_factor = 1.0;  // StableLM: 0.25
    bool qkv_bias = true;
    bool tie_word_embeddings = false;
    int64_t max_position_embeddings = 0;
    int64_t bos_token_id = -1, eos_token_id = -1, pad_token_id = -1;  // -1 = not given

    // HF: int(head_dim * partial_rotary_factor) (modeling_rope_utils, default rope type).
    int64_t rotary_dim() const { return static_cast<int64_t>(static_cast<double>(head_dim) * partial_rotary_factor); }
    int64_t kv_groups() const { return num_heads / num_kv_heads; }
};

// `path` is a config.json or a model directory containing one. Throws std::runtime_error naming
// the file and the offending field (unknown model_type, missing or inconsistent sizes, features
// this implementation does not have such as qk_layernorm, parallel residual, rope scaling).
DecoderConfig decoder_config_from_json(const std::string & path);
DecoderConfig decoder_config_from_json(const nlohmann::json & j, const std::string & source);

// Number of parameters the checkpoint holds (lm_head only when untied), from the config alone.
int64_t decoder_parameter_count(const DecoderConfig & c);

}  // namespace idamoe::model
