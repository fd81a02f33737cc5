// Strict checkpoint → module loading (see hf_loader.h).

#include "io/hf_loader.h"

#include <algorithm>
#include <filesystem>
#include <set>
#include <sstream>
#include <stdexcept>

namespace idamoe::io {

namespace {

bool starts_with(const std::string & s, const std::string & p) { return s.compare(0, p.size(), p) == 0; }

std::string shape_str(c10::IntArrayRef s) {
    std::ostringstream o;
    o << '[';
    for (size_t i = 0; i < s.size(); ++i) o << (i ? ", " : "") << s[i];
    o << ']';
    return o.str();
}

// At most `cap` names, then a count, so one bad prefix does not print ten thousand lines.
std::string list(const std::vector<std::string> & names, size_t cap = 40) {
    std::ostringstream o;
    for (size_t i = 0; i < names.size() && i < cap; ++i) o << "\n    " << names[i];
    if (names.size() > cap) o << "\n    ... and " << (names.size() - cap) << " more";
    return o.str();
}

// The file (or index) load_checkpoint_dir reads in `dir`, for error messages.
std::string checkpoint_name(const std::string & dir) {
    for (const char * f : {"model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                           "pytorch_model.bin.index.json"}) {
        const auto p = std::filesystem::path(dir) / f;
        if (std::filesystem::exists(p)) return p.string();
    }
    return dir;
}

}  // namespace

TensorMap module_state(const torch::nn::Module & module) {
    TensorMap out;
    for (const auto & p : module.named_parameters(/*recurse=*/true)) out[p.key()] = p.value().detach();
    for (const auto & b : module.named_buffers(/*recurse=*/true)) out[b.key()] = b.value().detach();
    return out;
}

LoadReport load_state_strict(torch::nn::Module & module, const TensorMap & state, const std::string & source,
                             const LoadOptions & options) {
    LoadReport report;
    std::map<std::string, torch::Tensor> targets;
    for (const auto & p : module.named_parameters(true)) targets[p.key()] = p.value();
    for (const auto & b : module.named_buffers(true)) targets[b.key()] = b.value();
    for (auto it = targets.begin(); it != targets.end();) {
        const bool skip = std::any_of(options.skip_module_prefixes.begin(), options.skip_module_prefixes.end(),
                                      [&](const std::string & p) { return starts_with(it->first, p); });
        it = skip ? targets.erase(it) : std::next(it);
    }

    // Checkpoint key → module name, after the options.
    std::map<std::string, std::pair<std::string, torch::Tensor>> incoming;  // module name → (raw key, tensor)
    std::vector<std::string> unexpected, mismatched;
    std::set<std::string> mismatched_names;
    for (const auto & [raw, t] : state) {
        const bool ignored = std::any_of(options.ignore_prefixes.begin(), options.ignore_prefixes.end(),
                                         [&](const std::string & p) { return starts_with(raw, p); });
        std::string name = raw;
        if (!ignored && !options.strip_prefix.empty()) {
            if (starts_with(raw, options.strip_prefix)) {
                name = raw.substr(options.strip_prefix.size());
            } else if (options.only_stripped) {
                report.ignored.push_back(raw);
                continue;
            }
        }
        if (ignored) {
            report.ignored.push_back(raw);
            continue;
        }
        name = options.add_prefix + name;
        auto target = targets.find(name);
        if (target == targets.end()) {
            unexpected.push_back(raw == name ? raw : raw + " (as " + name + ")");
            continue;
        }
        if (!t.sizes().equals(target->second.sizes())) {
            mismatched.push_back(name + ": checkpoint " + shape_str(t.sizes()) + " vs model " +
                                 shape_str(target->second.sizes()));
            mismatched_names.insert(name);
            continue;
        }
        incoming[name] = {raw, t};
    }
    std::vector<std::string> missing;
    for (const auto & [name, param] : targets) {
        if (incoming.count(name)) continue;
        if (mismatched_names.count(name)) continue;  // reported as a mismatch, not as missing
        if (std::find(options.allow_missing.begin(), options.allow_missing.end(), name) != options.allow_missing.end())
            report.allowed_missing.push_back(name);
        else
            missing.push_back(name);
    }
    if (!missing.empty() || !unexpected.empty() || !mismatched.empty()) {
        std::ostringstream o;
        o << "loading " << source << " failed (strict: every checkpoint tensor must fill one parameter):";
        if (!missing.empty()) o << "\n  " << missing.size() << " missing key(s) (in the model, not in the checkpoint):" << list(missing);
        if (!unexpected.empty())
            o << "\n  " << unexpected.size() << " unexpected key(s) (in the checkpoint, not in the model):" << list(unexpected);
        if (!mismatched.empty()) o << "\n  " << mismatched.size() << " shape mismatch(es):" << list(mismatched);
        throw std::runtime_error(o.str());
    }

    torch::NoGradGuard no_grad;
    for (auto & [name, entry] : incoming) {
        torch::Tensor & dst = targets[name];
        const torch::Tensor & src = entry.second;
        if (src.is_floating_point() != dst.is_floating_point() && dst.scalar_type() != src.scalar_type())
            throw std::runtime_error("loading " + source + ": tensor '" + entry.first + "' has dtype " +
                                     std::string(c10::toString(src.scalar_type())) + " but the model expects " +
                                     std::string(c10::toString(dst.scalar_type())));
        dst.copy_(src);  // converts dtype (bf16/f16 → compute dtype) and device
        report.loaded.push_back(name);
    }
    return report;
}

model::CausalLM load_causal_lm(const std::string & dir, torch::ScalarType dtype) {
    const model::DecoderConfig cfg = model::decoder_config_from_json(dir);
    model::CausalLM lm(cfg);
    lm->to(dtype);
    LoadOptions opt;
    if (cfg.tie_word_embeddings) opt.ignore_prefixes.push_back("lm_head.");
    load_state_strict(*lm, load_checkpoint_dir(dir), checkpoint_name(dir), opt);
    return lm;
}

}  // namespace idamoe::io
