// defines: classify_param, stage_trains, apply_stage_rules
#include "train/stages.h"

#include <cstdio>
#include <regex>
#include <stdexcept>

namespace idamoe::train {

const char * param_kind_name(ParamKind k) {
    switch (k) {
        case ParamKind::vision: return "vision";
        case ParamKind::projector: return "projector";
        case ParamKind::embed: return "embed";
        case ParamKind::attention: return "attention";
        case ParamKind::norm: return "norm";
        case ParamKind::ffn: return "ffn";
        case ParamKind::expert: return "expert";
        case ParamKind::router: return "router";
        case ParamKind::lm_head: return "lm_head";
        case ParamKind::other: return "other";
    }
    return "other";
}

namespace {
bool has(const std::string & s, const char * pat) { return s.find(pat) != std::string::npos; }
}  // namespace

ParamKind classify_param(const std::string & name) {
    if (has(name, "vision_tower")) return ParamKind::vision;
    if (has(name, "mm_projector")) return ParamKind::projector;
    if (has(name, "lm_head")) return ParamKind::lm_head;
    if (has(name, "embed_tokens") || has(name, "transformer.wte")) return ParamKind::embed;
    // FFN slot of a decoder layer: model.layers.N.mlp.* (Qwen-1: transformer.h.N.mlp.*).
    static const std::regex kMlp(R"((^|\.)(layers|h)\.\d+\.mlp\.(.*)$)");
    std::smatch m;
    if (std::regex_search(name, m, kMlp)) {
        const std::string rest = m[3].str();
        if (has(rest, "expert")) return ParamKind::expert;
        static const std::regex kDense(R"(^(gate_proj|up_proj|down_proj|w1|w2|c_proj|fc1|fc2)\.(weight|bias)$)");
        if (std::regex_match(rest, kDense)) return ParamKind::ffn;
        return ParamKind::router;
    }
    if (has(name, "norm") || has(name, "ln_")) return ParamKind::norm;
    if (has(name, "self_attn") || has(name, ".attn.")) return ParamKind::attention;
    return ParamKind::other;
}

bool stage_trains(int64_t stage, const std::string & name) {
    const ParamKind k = classify_param(name);
    if (k == ParamKind::vision) return false;  // the tower is frozen in every stage (clip_encoder.py)
    switch (stage) {
        case 1: return k == ParamKind::projector;
        case 2: return true;
        case 3: return k == ParamKind::projector || k == ParamKind::ffn || k == ParamKind::expert || k == ParamKind::router;
        default: throw std::invalid_argument("train.stage must be 1, 2 or 3, got " + std::to_string(stage));
    }
}

namespace {
std::string human(int64_t n) {
    char buf[32];
    if (n >= 1000000000) std::snprintf(buf, sizeof buf, "%.2fB", n / 1e9);
    else if (n >= 1000000) std::snprintf(buf, sizeof buf, "%.2fM", n / 1e6);
    else if (n >= 1000) std::snprintf(buf, sizeof buf, "%.1fK", n / 1e3);
    else std::snprintf(buf, sizeof buf, "%lld", static_cast<long long>(n));
    return buf;
}
}  // namespace

std::string TrainableSummary::to_string() const {
    std::string s = "trainable " + human(trainable) + " / frozen " + human(frozen) + " parameters";
    for (const auto & [kind, c] : by_kind) s += " | " + kind + " " + human(c.trainable) + "/" + human(c.frozen);
    return s + "  (trainable/frozen per module)";
}

TrainableSummary apply_stage_rules(torch::nn::Module & model, int64_t stage, const std::vector<std::string> & override_patterns) {
    if (stage < 1 || stage > 3) throw std::invalid_argument("train.stage must be 1, 2 or 3, got " + std::to_string(stage));
    TrainableSummary sum;
    std::vector<int64_t> pattern_hits(override_patterns.size(), 0);
    for (auto & item : model.named_parameters(/*recurse=*/true)) {
        const std::string & name = item.key();
        torch::Tensor p = item.value();
        const ParamKind kind = classify_param(name);
        bool train;
        if (override_patterns.empty()) {
            train = stage_trains(stage, name);
        } else {
            train = false;
            // the tower stays frozen whatever the patterns say (stage_trains says why)
            if (kind != ParamKind::vision)
                for (size_t i = 0; i < override_patterns.size(); ++i)
                    if (name.find(override_patterns[i]) != std::string::npos) { train = true; ++pattern_hits[i]; }
        }
        p.set_requires_grad(train);
        auto & c = sum.by_kind[param_kind_name(kind)];
        (train ? c.trainable : c.frozen) += p.numel();
        (train ? sum.trainable : sum.frozen) += p.numel();
        if (train) ++sum.trainable_tensors;
    }
    for (size_t i = 0; i < override_patterns.size(); ++i)
        if (pattern_hits[i] == 0) {
            // A pattern aimed at the tower can never match; say why rather than leave users hunting for a typo.
            const bool tower = override_patterns[i].find("vision") != std::string::npos;
            throw std::invalid_argument("train.trainable pattern '" + override_patterns[i] + "' matches no parameter name" +
                                        (tower ? " (the vision tower is frozen in every stage, as in MoE-LLaVA, and "
                                                 "idamoe does not train it)" : ""));
        }
    if (sum.trainable == 0)
        throw std::invalid_argument("stage " + std::to_string(stage) + ": no parameter is trainable (model has " +
                                    std::to_string(sum.frozen) + " frozen elements); check the model and train.trainable");
    return sum;
}

}  // namespace idamoe::train
