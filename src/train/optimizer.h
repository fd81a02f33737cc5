// defines: AdamWOptions, ParamGroup, AdamW, is_no_decay, clip_grad_norm, global_grad_norm
//
// AdamW (Loshchilov & Hutter, arXiv 1711.05101) with two parameter groups, as HF Trainer builds them:
// weight decay only on >=2-D weights; none on biases, norms and the GMM router parameters (means,
// variances, mixing logits are statistics, not weights). The update is op-for-op the one of
// torch.optim.AdamW (foreach=False), so it matches torch bit for bit. State is keyed by parameter
// name, so a checkpoint can be resumed exactly and a mismatch names the offending tensor.
#pragma once

#include <torch/torch.h>

#include <functional>
#include <map>
#include <string>
#include <utility>
#include <vector>

namespace idamoe::train {

struct AdamWOptions {
    double lr = 2e-5;
    double beta1 = 0.9;        // HF defaults (adamw_torch): betas (0.9, 0.999), eps 1e-8
    double beta2 = 0.999;
    double eps = 1e-8;
    double weight_decay = 0.0; // MoE-LLaVA uses 0 in all three stages
};

struct ParamGroup {
    std::string name;                  // "decay" | "no_decay", with a "@x<scale>" suffix when lr_scale != 1
    double weight_decay = 0.0;
    double lr_scale = 1.0;             // this group steps with lr * lr_scale
    std::vector<std::string> names;
    std::vector<torch::Tensor> params;
};

// True for parameters that must not be decayed: < 2-D tensors (biases, norm gains), anything named
// like a norm, and the GMM router statistics (means/vars/mix_logits of IDA-MoE's router).
bool is_no_decay(const std::string & name, const torch::Tensor & param);

class AdamW {
public:
    // Only parameters with requires_grad are taken; the order of `named_params` fixes the update order
    // within a group. `lr_scale_of(name)` (optional) gives a per-parameter multiplier of the step's lr;
    // parameters are grouped by (decay, multiplier).
    using LrScaleFn = std::function<double(const std::string &)>;
    AdamW(const std::vector<std::pair<std::string, torch::Tensor>> & named_params, const AdamWOptions & opts,
          const LrScaleFn & lr_scale_of = nullptr);

    // One update with learning rate `lr` for every parameter that has a gradient (others are skipped and
    // keep their per-parameter step count, as in torch).
    void step(double lr);
    void zero_grad();  // sets gradients to undefined (set_to_none=True)

    const std::vector<ParamGroup> & groups() const { return groups_; }
    const AdamWOptions & options() const { return opts_; }
    int64_t num_params() const;  // element count of all managed parameters
    // true (default): contiguous fp32 CPU tensors take one fused pass per parameter; false: the ATen op
    // sequence of torch's single-tensor AdamW everywhere (bit-identical to torch::optim::AdamW).
    void set_fused(bool on) { fused_ = on; }

    // "exp_avg/<name>", "exp_avg_sq/<name>", "step/<name>" (int64 scalar) for every parameter that has state.
    std::map<std::string, torch::Tensor> state_dict() const;
    // Strict: every entry must name a managed parameter with the same shape; a parameter with a stored step
    // must have both moments. Throws std::runtime_error naming the tensor otherwise.
    void load_state_dict(const std::map<std::string, torch::Tensor> & state);

private:
    struct State {
        torch::Tensor exp_avg, exp_avg_sq;
        int64_t step = 0;
    };
    bool fused_cpu_step(torch::Tensor & p, const torch::Tensor & grad, State & s, double lr, double wd,
                        double step_size, double bias_correction2_sqrt) const;
    AdamWOptions opts_;
    bool fused_ = true;
    std::vector<ParamGroup> groups_;
    std::map<std::string, State> state_;
    std::map<std::string, torch::Tensor> by_name_;
};

// L2 norm over all gradients (as one vector), computed in float32 on the gradients' device.
double global_grad_norm(const std::vector<torch::Tensor> & params);
// torch.nn.utils.clip_grad_norm_: scales gradients by max_norm/(norm+1e-6) when norm > max_norm.
// Returns the norm before clipping. max_norm <= 0 only measures. A non-finite norm is returned unclipped.
double clip_grad_norm(const std::vector<torch::Tensor> & params, double max_norm);

}  // namespace idamoe::train
