// idamoe-forward: run one model from its Hugging Face directory on tensors from a safetensors file
// and write what it computes, for parity checks against the Python reference.
//   idamoe-forward --model DIR --inputs IN.safetensors --out OUT.safetensors
//                  [--grad PARAM]... [--generate N] [--dtype float32|bfloat16|float16]
// Causal LMs (model_type qwen2, stablelm, stablelm_epoch) read input_ids [B, T] (int64) and
// optionally attention_mask [B, T] (1 = real, right padding) and labels [B, T] (-100 = ignore);
// they write logits, hidden_states.{i}, last_hidden_state, loss (with labels), grad.PARAM (with
// --grad; needs labels), and with --generate: greedy_ids, greedy_attention_mask, cached_step_logits.
// Vision towers (model_type clip, clip_vision_model, siglip, siglip_vision_model) read pixel_values
// [B, 3, H, W] (already normalised) and write hidden_states.{i}, hidden_states_minus2,
// last_hidden_state and, with --grad, grad.PARAM = d sum(hidden_states[-2]) / d PARAM.
//
// GMM router mode (no --model): idamoe-forward --gmm PARAMS --inputs POINTS --out OUT [--top-k K]
// evaluates one GMM set (weights [C], means [C,d], variances [C,d], expert_of_component [C]) on points
// [n,d] through the router's own GMM code (moe::gmm_inspect, fp64) and writes log_likelihood,
// log_weighted_prob, posteriors, log_posteriors, expert_log_scores, topk_experts, topk_gates.
//
// main() only parses and dispatches: one run_* function per mode. A new model family adds a
// run_* function and a branch in dispatch(); a mode without --model (e.g. a GMM router) adds its
// options and a branch before the model_type lookup.
#include "core/runtime.h"
#include "io/hf_loader.h"
#include "io/safetensors.h"
#include "model/decoder.h"
#include "model/generate.h"
#include "model/vision_tower.h"
#include "moe/gmm.h"

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <stdexcept>

using namespace idamoe;

namespace {

struct ForwardArgs {
    std::string model_dir, inputs, out;
    std::vector<std::string> grads;
    int64_t generate = 0;
    std::string dtype = "float32";
    std::string gmm;     // GMM router parameters (safetensors): selects the GMM mode
    int64_t top_k = 2;
};

[[noreturn]] void fail(const std::string & msg) { throw std::runtime_error(msg); }

torch::ScalarType parse_dtype(const std::string & s) {
    if (s == "float32") return torch::kFloat32;
    if (s == "bfloat16") return torch::kBFloat16;
    if (s == "float16") return torch::kFloat16;
    fail("--dtype must be float32, bfloat16 or float16, got '" + s + "'");
}

std::string model_type_of(const std::string & dir) {
    const std::string path = (std::filesystem::path(dir) / "config.json").string();
    std::ifstream in(path);
    if (!in) fail(path + ": cannot open (is --model a Hugging Face model directory?)");
    nlohmann::json j;
    try {
        j = nlohmann::json::parse(in);
    } catch (const nlohmann::json::exception & e) {
        fail(path + ": invalid JSON: " + e.what());
    }
    if (!j.is_object() || !j.contains("model_type") || !j["model_type"].is_string())
        fail(path + ": missing string field 'model_type'");
    return j["model_type"].get<std::string>();
}

// Writes next to the target and renames, so a failed run never leaves a half-written file.
void save_atomic(const std::string & path, const io::TensorMap & tensors) {
    const std::string tmp = path + ".tmp";
    io::save_safetensors(tmp, tensors);
    std::filesystem::rename(tmp, path);
}

const torch::Tensor & input(const io::TensorMap & in, const std::string & name, const std::string & file) {
    auto it = in.find(name);
    if (it == in.end()) fail(file + ": no tensor '" + name + "'");
    return it->second;
}

// ------------------------------------------------------------------------------------------
int run_causal_lm(const ForwardArgs & a) {
    model::CausalLM lm = io::load_causal_lm(a.model_dir, parse_dtype(a.dtype));
    const io::TensorMap in = io::load_safetensors(a.inputs);
    const torch::Tensor & ids = input(in, "input_ids", a.inputs);
    if (ids.dim() != 2 || ids.scalar_type() != torch::kInt64)
        fail(a.inputs + ": input_ids must be int64 [B, T], got " + std::string(c10::toString(ids.scalar_type())) + " " +
             c10::str(ids.sizes()));
    const int64_t B = ids.size(0), T = ids.size(1);
    auto optional_BT = [&](const std::string & name) {
        auto it = in.find(name);
        if (it == in.end()) return torch::Tensor();
        if (!it->second.sizes().equals({B, T}) || it->second.is_floating_point())
            fail(a.inputs + ": " + name + " must be an integer [" + std::to_string(B) + ", " + std::to_string(T) +
                 "] tensor, got " + c10::str(it->second.sizes()));
        return it->second.to(torch::kInt64);
    };
    const torch::Tensor mask = optional_BT("attention_mask");
    const torch::Tensor labels = optional_BT("labels");

    auto params = lm->named_parameters();
    for (const auto & g : a.grads)
        if (!params.contains(g)) fail("--grad " + g + ": the model has no parameter of that name");
    if (!a.grads.empty() && !labels.defined()) fail("--grad needs 'labels' in " + a.inputs + " (gradients are of the loss)");

    io::TensorMap out;
    const bool want_grad = !a.grads.empty();
    lm->train(want_grad);  // no dropout in these models: train() only matters for checkpointing
    {
        torch::AutoGradMode grad_mode(want_grad);
        model::DecoderOutput o = lm->forward(ids, mask, /*want_hidden=*/true);
        out["logits"] = o.logits_BTV.detach().to(torch::kFloat32);
        for (size_t i = 0; i < o.hidden_states.size(); ++i)
            out["hidden_states." + std::to_string(i)] = o.hidden_states[i].detach().to(torch::kFloat32);
        out["last_hidden_state"] = o.hidden_states.back().detach().to(torch::kFloat32);
        if (labels.defined()) {
            torch::Tensor loss = model::causal_lm_loss(o.logits_BTV, labels);
            out["loss"] = loss.detach().to(torch::kFloat32).reshape({1});
            if (want_grad) {
                loss.backward();
                for (const auto & g : a.grads) out["grad." + g] = params[g].grad().detach().to(torch::kFloat32);
            }
        }
    }
    if (a.generate > 0) {
        auto gen = model::greedy_generate(lm, ids, mask, a.generate, /*want_next_logits=*/true);
        out["greedy_ids"] = gen.ids_BN;
        out["greedy_attention_mask"] = gen.mask_BN;
        out["cached_step_logits"] = gen.next_logits_BV.unsqueeze(1).to(torch::kFloat32);
    }
    save_atomic(a.out, out);
    std::fprintf(stderr, "idamoe-forward: %s: wrote %zu tensors to %s\n", lm->config().model_type.c_str(), out.size(),
                 a.out.c_str());
    return 0;
}

// ------------------------------------------------------------------------------------------
int run_vision_tower(const ForwardArgs & a) {
    if (a.generate > 0) fail("--generate is for language models; " + a.model_dir + " is a vision tower");
    model::VisionTower tower = model::build_vision_tower(a.model_dir, parse_dtype(a.dtype));
    const io::TensorMap in = io::load_safetensors(a.inputs);
    const torch::Tensor & px = input(in, "pixel_values", a.inputs);
    if (px.dim() != 4 || !px.is_floating_point())
        fail(a.inputs + ": pixel_values must be a floating-point [B, C, H, W] tensor, got " + c10::str(px.sizes()));
    io::TensorMap out;
    for (auto & [name, t] : model::vision_forward_dump(tower, px, a.grads)) out[name] = t.detach().to(torch::kFloat32);
    save_atomic(a.out, out);
    std::fprintf(stderr, "idamoe-forward: %s vision tower: wrote %zu tensors to %s\n", tower->config().arch_name(),
                 out.size(), a.out.c_str());
    return 0;
}

// ------------------------------------------------------------------------------------------
int run_gmm(const ForwardArgs & a) {
    if (a.inputs.empty() || a.out.empty()) fail("--gmm needs --inputs POINTS and --out OUT");
    const std::string tmp = a.out + ".tmp";
    moe::gmm_inspect(a.gmm, a.inputs, tmp, a.top_k);
    std::filesystem::rename(tmp, a.out);
    std::fprintf(stderr, "idamoe-forward: gmm: wrote %s\n", a.out.c_str());
    return 0;
}

int dispatch(const ForwardArgs & a) {
    if (!a.gmm.empty()) return run_gmm(a);
    if (a.model_dir.empty()) fail("--model DIR is required");
    if (a.inputs.empty() || a.out.empty()) fail("--inputs and --out are required");
    const std::string type = model_type_of(a.model_dir);
    if (type == "qwen2" || type == "stablelm" || type == "stablelm_epoch") return run_causal_lm(a);
    if (type == "clip" || type == "clip_vision_model" || type == "siglip" || type == "siglip_vision_model")
        return run_vision_tower(a);
    fail((std::filesystem::path(a.model_dir) / "config.json").string() + ": model_type '" + type +
         "' is not supported by idamoe-forward (language models: qwen2, stablelm, stablelm_epoch; vision towers: "
         "clip, clip_vision_model, siglip, siglip_vision_model)");
}

}  // namespace

int main(int argc, char ** argv) {
    idamoe::core::tune_cpu_runtime(argv);  // as idamoe-train: passive OpenMP, freed memory kept in the heap
    CLI::App app{"idamoe-forward: run a Hugging Face model directory on inputs from a safetensors file"};
    app.set_version_flag("--version", std::string("idamoe ") + IDAMOE_VERSION);
    ForwardArgs a;
    app.add_option("--model", a.model_dir, "Hugging Face model directory (config.json + weights)")->check(CLI::ExistingDirectory);
    app.add_option("--inputs", a.inputs, "Input tensors (safetensors)")->check(CLI::ExistingFile);
    app.add_option("--out", a.out, "Where to write the outputs (safetensors)");
    app.add_option("--grad", a.grads, "Also write grad.NAME = d loss / d parameter NAME (repeatable; LMs need labels; "
                                      "vision towers: d sum(hidden_states[-2]) / d NAME)");
    app.add_option("--generate", a.generate, "Greedy-decode N tokens with the KV cache")->check(CLI::NonNegativeNumber);
    app.add_option("--gmm", a.gmm, "GMM router mode: one GMM set's parameters (safetensors); --inputs holds 'points'")
        ->check(CLI::ExistingFile);
    app.add_option("--top-k", a.top_k, "GMM mode: experts per point")->check(CLI::PositiveNumber);
    app.add_option("--dtype", a.dtype, "Compute dtype")->check(CLI::IsMember({"float32", "bfloat16", "float16"}));
    try {
        app.parse(argc, argv);
    } catch (const CLI::ParseError & e) {
        return app.exit(e);
    }
    try {
        return dispatch(a);
    } catch (const c10::Error & e) {
        std::fprintf(stderr, "idamoe-forward: error: %s\n", e.what_without_backtrace());
    } catch (const std::exception & e) {
        std::fprintf(stderr, "idamoe-forward: error: %s\n", e.what());
    }
    return 1;
}
