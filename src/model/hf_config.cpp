// config.json → DecoderConfig (see hf_config.h).

#include "model/hf_config.h"

#include <filesystem>
#include <fstream>
#include <stdexcept>

namespace idamoe::model {

namespace {

using json = nlohmann::json;

[[noreturn]] void fail(const std::string & source, const std::string & what) {
    throw std::runtime_error(source + ": " + what);
}

// First present of several HF spellings (stablelm_epoch used norm_eps / rope_pct / num_heads).
const json * field(const json & j, std::initializer_list<const char *> names) {
    for (const char * n : names)
        if (j.contains(n) && !j[n].is_null()) return &j[n];
    return nullptr;
}

int64_t req_int(const json & j, const std::string & src, std::initializer_list<const char *> names) {
    const json * v = field(j, names);
    if (!v) fail(src, std::string("missing field '") + *names.begin() + "'");
    if (!v->is_number_integer() || v->get<int64_t>() <= 0)
        fail(src, std::string("field '") + *names.begin() + "' must be a positive integer, got " + v->dump());
    return v->get<int64_t>();
}

double num(const json & j, const std::string & src, std::initializer_list<const char *> names, double dflt) {
    const json * v = field(j, names);
    if (!v) return dflt;
    if (!v->is_number()) fail(src, std::string("field '") + *names.begin() + "' must be a number, got " + v->dump());
    return v->get<double>();
}

bool flag(const json & j, const std::string & src, const char * name, bool dflt) {
    const json * v = field(j, {name});
    if (!v) return dflt;
    if (!v->is_boolean()) fail(src, std::string("field '") + name + "' must be true/false, got " + v->dump());
    return v->get<bool>();
}

int64_t token_id(const json & j, const char * name) {
    const json * v = field(j, {name});
    if (v && v->is_number_integer()) return v->get<int64_t>();
    if (v && v->is_array() && !v->empty() && (*v)[0].is_number_integer()) return (*v)[0].get<int64_t>();
    return -1;
}

}  // namespace

DecoderConfig decoder_config_from_json(const std::string & path) {
    std::filesystem::path p(path);
    if (std::filesystem::is_directory(p)) p /= "config.json";
    std::ifstream in(p);
    if (!in) fail(p.string(), "cannot open");
    json j;
    try {
        j = json::parse(in);
    } catch (const json::exception & e) {
        fail(p.string(), std::string("invalid JSON: ") + e.what());
    }
    return decoder_config_from_json(j, p.string());
}

DecoderConfig decoder_config_from_json(const json & j, const std::string & src) {
    if (!j.is_object()) fail(src, "config is not a JSON object");
    if (!j.contains("model_type") || !j["model_type"].is_string()) fail(src, "missing string field 'model_type'");
    DecoderConfig c;
    const std::string mt = j["model_type"].get<std::string>();
    if (mt == "qwen2") {
        c.model_type = "qwen2";
        c.norm = NormKind::RMSNorm;
        c.norm_eps = num(j, src, {"rms_norm_eps"}, 1e-6);
        c.qkv_bias = true;  // hard-coded in Qwen2Attention (q/k/v bias, o_proj none)
        c.partial_rotary_factor = 1.0;
        if (flag(j, src, "use_sliding_window", false))
            fail(src, "use_sliding_window=true is not supported (Qwen2-1.5B ships false: full causal attention)");
    } else if (mt == "stablelm" || mt == "stablelm_epoch") {
        c.model_type = "stablelm";
        c.norm = NormKind::LayerNorm;
        c.norm_eps = num(j, src, {"layer_norm_eps", "norm_eps"}, 1e-5);
        c.qkv_bias = flag(j, src, "use_qkv_bias", false);  // StableLmConfig default
        c.partial_rotary_factor = num(j, src, {"partial_rotary_factor", "rope_pct"}, 0.25);
        if (flag(j, src, "qk_layernorm", false)) fail(src, "qk_layernorm=true (StableLM-2-12B style) is not supported");
        if (flag(j, src, "use_parallel_residual", false))
            fail(src, "use_parallel_residual=true (StableLM-2-12B style) is not supported");
    } else {
        fail(src, "model_type '" + mt + "' is not a supported language model (expected qwen2, stablelm or stablelm_epoch)");
    }
    c.vocab_size = req_int(j, src, {"vocab_size"});
    c.hidden_size = req_int(j, src, {"hidden_size"});
    c.intermediate_size = req_int(j, src, {"intermediate_size"});
    c.num_layers = req_int(j, src, {"num_hidden_layers"});
    c.num_heads = req_int(j, src, {"num_attention_heads", "num_heads"});
    c.num_kv_heads = field(j, {"num_key_value_heads"}) ? req_int(j, src, {"num_key_value_heads"}) : c.num_heads;
    if (c.hidden_size % c.num_heads != 0)
        fail(src, "hidden_size " + std::to_string(c.hidden_size) + " is not divisible by num_attention_heads " +
                      std::to_string(c.num_heads));
    c.head_dim = c.hidden_size / c.num_heads;
    if (c.num_heads % c.num_kv_heads != 0)
        fail(src, "num_attention_heads " + std::to_string(c.num_heads) + " is not a multiple of num_key_value_heads " +
                      std::to_string(c.num_kv_heads));
    c.rope_theta = num(j, src, {"rope_theta"}, 10000.0);
    if (c.partial_rotary_factor <= 0.0 || c.partial_rotary_factor > 1.0)
        fail(src, "partial_rotary_factor must be in (0, 1], got " + std::to_string(c.partial_rotary_factor));
    if (c.rotary_dim() % 2 != 0 || c.rotary_dim() == 0)
        fail(src, "rotary width head_dim*partial_rotary_factor = " + std::to_string(c.rotary_dim()) + " must be even and > 0");
    if (const json * rs = field(j, {"rope_scaling"})) {
        const std::string type = rs->is_object() ? rs->value("rope_type", rs->value("type", std::string("?"))) : "?";
        if (type != "default") fail(src, "rope_scaling " + rs->dump() + " is not supported (only the default rotary)");
    }
    const std::string act = j.value("hidden_act", std::string("silu"));
    if (act != "silu") fail(src, "hidden_act '" + act + "' is not supported (expected silu)");
    c.tie_word_embeddings = flag(j, src, "tie_word_embeddings", mt == "qwen2");
    c.max_position_embeddings = j.value("max_position_embeddings", int64_t(0));
    c.bos_token_id = token_id(j, "bos_token_id");
    c.eos_token_id = token_id(j, "eos_token_id");
    c.pad_token_id = token_id(j, "pad_token_id");
    return c;
}

int64_t decoder_parameter_count(const DecoderConfig & c) {
    const int64_t D = c.hidden_size, I = c.intermediate_size, V = c.vocab_size;
    const int64_t kv = c.num_kv_heads * c.head_dim;
    const int64_t norm = c.norm == NormKind::LayerNorm ? 2 * D : D;  // weight (+ bias)
    const int64_t bias = c.qkv_bias ? D + 2 * kv : 0;
    const int64_t attn = D * D + 2 * kv * D + bias + D * D;  // q, k, v (+ biases), o
    const int64_t mlp = 3 * D * I;                            // gate, up, down
    const int64_t layer = attn + mlp + 2 * norm;
    return V * D + c.num_layers * layer + norm + (c.tie_word_embeddings ? 0 : V * D);
}

}  // namespace idamoe::model
