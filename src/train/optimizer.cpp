// defines: AdamW, is_no_decay, clip_grad_norm, global_grad_norm
#include "train/optimizer.h"

#include "train/adamw_kernel.h"

#include <algorithm>
#include <cmath>
#include <iterator>
#include <stdexcept>

namespace idamoe::train {

bool is_no_decay(const std::string & name, const torch::Tensor & param) {
    if (param.dim() < 2) return true;
    // GMM router statistics of IDA-MoE (means [E*C, d] is 2-D but must not shrink towards 0).
    static const char * kNoDecay[] = {"norm", "layernorm", "ln_", "means", "vars", "var_raw", "mix_logits", "bias"};
    for (const char * pat : kNoDecay)
        if (name.find(pat) != std::string::npos) return true;
    return false;
}

AdamW::AdamW(const std::vector<std::pair<std::string, torch::Tensor>> & named_params, const AdamWOptions & opts,
             const LrScaleFn & lr_scale_of)
    : opts_(opts) {
    // Groups in order of first appearance: "decay" and "no_decay" first, as HF Trainer builds them.
    groups_ = {ParamGroup{"decay", opts.weight_decay, 1.0, {}, {}}, ParamGroup{"no_decay", 0.0, 1.0, {}, {}}};
    for (const auto & [name, p] : named_params) {
        if (!p.requires_grad()) continue;
        TORCH_CHECK(!by_name_.count(name), "AdamW: parameter '", name, "' given twice");
        by_name_[name] = p;
        const bool decay = !is_no_decay(name, p);
        const double scale = lr_scale_of ? lr_scale_of(name) : 1.0;
        TORCH_CHECK(scale > 0 && std::isfinite(scale), "AdamW: lr scale of '", name, "' must be > 0, got ", scale);
        const std::string gname = std::string(decay ? "decay" : "no_decay") +
                                  (scale == 1.0 ? "" : "@x" + c10::str(scale));
        auto it = std::find_if(groups_.begin(), groups_.end(), [&](const ParamGroup & g) { return g.name == gname; });
        if (it == groups_.end()) {
            groups_.push_back(ParamGroup{gname, decay ? opts.weight_decay : 0.0, scale, {}, {}});
            it = std::prev(groups_.end());
        }
        it->names.push_back(name);
        it->params.push_back(p);
    }
}

int64_t AdamW::num_params() const {
    int64_t n = 0;
    for (const auto & g : groups_)
        for (const auto & p : g.params) n += p.numel();
    return n;
}

void AdamW::step(double base_lr) {
    torch::NoGradGuard no_grad;
    const double b1 = opts_.beta1, b2 = opts_.beta2;
    for (const auto & g : groups_) {
        const double lr = base_lr * g.lr_scale;
        for (size_t i = 0; i < g.params.size(); ++i) {
            torch::Tensor p = g.params[i];
            const torch::Tensor & grad = p.grad();
            if (!grad.defined()) continue;
            State & s = state_[g.names[i]];
            if (!s.exp_avg.defined()) {
                s.exp_avg = torch::zeros_like(p, torch::MemoryFormat::Preserve);
                s.exp_avg_sq = torch::zeros_like(p, torch::MemoryFormat::Preserve);
            }
            s.step += 1;
            const double bias_correction1 = 1 - std::pow(b1, static_cast<double>(s.step));
            const double bias_correction2 = 1 - std::pow(b2, static_cast<double>(s.step));
            const double step_size = lr / bias_correction1;
            const double bias_correction2_sqrt = std::sqrt(bias_correction2);
            if (fused_ && fused_cpu_step(p, grad, s, lr, g.weight_decay, step_size, bias_correction2_sqrt)) continue;
            // Same op sequence as torch/optim/adamw.py _single_tensor_adamw (non-amsgrad, non-capturable).
            if (g.weight_decay != 0.0) p.mul_(1 - lr * g.weight_decay);  // x * 1.0 == x: skip the pass
            s.exp_avg.mul_(b1).add_(grad, 1 - b1);
            s.exp_avg_sq.mul_(b2).addcmul_(grad, grad, 1 - b2);
            torch::Tensor denom = (s.exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(opts_.eps);
            p.addcdiv_(s.exp_avg, denom, -step_size);
        }
    }
}


// One pass over p, grad, m, v instead of the eight of the op sequence above (the step is memory-bound:
// 27M parameters read and wrote ~3 GB per step that way). Each element follows the same float operations
// in the same order as those ATen kernels (scalars rounded to float first, addcmul/addcdiv as
// (value * t1) * t2 and (value * t1) / t2), so results equal the op sequence up to the contraction and
// vectorisation choices of the build; the test bounds the difference.
bool AdamW::fused_cpu_step(torch::Tensor & p, const torch::Tensor & grad, State & s, double lr, double wd,
                           double step_size, double bias_correction2_sqrt) const {
    // sparse first: is_contiguous() throws on a sparse tensor
    if (grad.is_sparse() || !p.device().is_cpu() || p.scalar_type() != torch::kFloat ||
        grad.scalar_type() != torch::kFloat || !p.is_contiguous() || !grad.is_contiguous() ||
        !s.exp_avg.is_contiguous() || !s.exp_avg_sq.is_contiguous())
        return false;
    float * P = p.data_ptr<float>();
    const float * G = grad.data_ptr<float>();
    float * M = s.exp_avg.data_ptr<float>();
    float * V = s.exp_avg_sq.data_ptr<float>();
    const float decay = static_cast<float>(1 - lr * wd), b1 = static_cast<float>(opts_.beta1),
                b2 = static_cast<float>(opts_.beta2), a1 = static_cast<float>(1 - opts_.beta1),
                a2 = static_cast<float>(1 - opts_.beta2), bc2 = static_cast<float>(bias_correction2_sqrt),
                eps = static_cast<float>(opts_.eps), neg_step = static_cast<float>(-step_size);
    const bool do_decay = wd != 0.0;
    at::parallel_for(0, p.numel(), 32768, [&](int64_t begin, int64_t end) {
        adamw_fused_range(P + begin, G + begin, M + begin, V + begin, end - begin, do_decay, decay, b1, a1, b2, a2, bc2,
                          eps, neg_step);
    });
    return true;
}

void AdamW::zero_grad() {
    for (auto & g : groups_)
        for (auto & p : g.params) p.mutable_grad() = torch::Tensor();
}

std::map<std::string, torch::Tensor> AdamW::state_dict() const {
    std::map<std::string, torch::Tensor> out;
    for (const auto & [name, s] : state_) {
        if (!s.exp_avg.defined()) continue;
        out["exp_avg/" + name] = s.exp_avg;
        out["exp_avg_sq/" + name] = s.exp_avg_sq;
        out["step/" + name] = torch::tensor(s.step, torch::kInt64);
    }
    return out;
}

void AdamW::load_state_dict(const std::map<std::string, torch::Tensor> & state) {
    std::map<std::string, State> loaded;
    for (const auto & [key, t] : state) {
        const auto slash = key.find('/');
        if (slash == std::string::npos)
            throw std::runtime_error("optimizer state: key '" + key + "' is not of the form kind/parameter");
        const std::string kind = key.substr(0, slash), name = key.substr(slash + 1);
        auto it = by_name_.find(name);
        if (it == by_name_.end())
            throw std::runtime_error("optimizer state: '" + key + "' names parameter '" + name +
                                     "', which this run does not train (different stage or train.trainable?)");
        const torch::Tensor & p = it->second;
        State & s = loaded[name];
        if (kind == "step") {
            s.step = t.item<int64_t>();
        } else if (kind == "exp_avg" || kind == "exp_avg_sq") {
            if (t.sizes() != p.sizes())
                throw std::runtime_error("optimizer state: '" + key + "' has shape " + c10::str(t.sizes()) +
                                         " but the parameter has " + c10::str(p.sizes()));
            torch::Tensor copy = t.to(p.device(), p.scalar_type()).clone();
            (kind == "exp_avg" ? s.exp_avg : s.exp_avg_sq) = copy;
        } else {
            throw std::runtime_error("optimizer state: unknown entry kind '" + kind + "' in '" + key + "'");
        }
    }
    for (const auto & [name, s] : loaded)
        if (!s.exp_avg.defined() || !s.exp_avg_sq.defined() || s.step <= 0)
            throw std::runtime_error("optimizer state for '" + name + "' is incomplete (needs exp_avg, exp_avg_sq, step)");
    state_ = std::move(loaded);
}

double global_grad_norm(const std::vector<torch::Tensor> & params) {
    torch::NoGradGuard no_grad;
    std::vector<torch::Tensor> norms;
    for (const auto & p : params)
        if (p.grad().defined()) norms.push_back(p.grad().detach().to(torch::kFloat32).norm(2));
    if (norms.empty()) return 0.0;
    return torch::stack(norms).norm(2).item<double>();
}

double clip_grad_norm(const std::vector<torch::Tensor> & params, double max_norm) {
    const double norm = global_grad_norm(params);
    if (max_norm <= 0 || !std::isfinite(norm)) return norm;
    const double coef = max_norm / (norm + 1e-6);
    if (coef < 1.0) {
        torch::NoGradGuard no_grad;
        for (const auto & p : params)
            if (p.grad().defined()) p.grad().mul_(coef);
    }
    return norm;
}

}  // namespace idamoe::train
