// Router base class, factory and helpers; see router.h.
#include "moe/router.h"

#include <ATen/CPUGeneratorImpl.h>

#include <cmath>

#include "model/decoder.h"
#include "moe/ida_router.h"
#include "moe/linear_routers.h"

namespace idamoe::moe {

namespace {
uint64_t splitmix64(uint64_t x) {  // Steele et al. 2014: decorrelates nearby (seed, layer, step) triples
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}
}  // namespace

RouterImpl::RouterImpl(const MoeLayerConfig & cfg) : cfg_(cfg) {
    validate(cfg_);
    init_gen_ = at::make_generator<at::CPUGeneratorImpl>(
        splitmix64(cfg_.seed ^ splitmix64(static_cast<uint64_t>(cfg_.layer_index + 1))));
    rng_step_ = register_buffer("rng_step", torch::zeros({1}, torch::kLong));
}

at::Generator RouterImpl::next_step_generator() {
    // The C++ counter mirrors the buffer; the buffer is re-read (one small copy) only when something else
    // wrote it since our last write: a checkpoint load (copy_) or a device move.
    if (rng_step_._version() != seen_version_) step_ = rng_step_.item<int64_t>();
    auto make = [&](int64_t step) {
        return at::make_generator<at::CPUGeneratorImpl>(
            splitmix64(cfg_.seed ^ splitmix64(static_cast<uint64_t>(cfg_.layer_index + 1)) ^
                       splitmix64(0x5EEDull + static_cast<uint64_t>(step))));
    };
    // Activation checkpointing re-runs this layer's forward in backward: draw the same numbers as the
    // forward did (same Gumbel noise, same reactivation flags) and do not advance.
    if (model::in_checkpoint_recompute() && step_ > 0) return make(step_ - 1);
    at::Generator gen = make(step_);
    ++step_;
    {
        torch::NoGradGuard ng;
        rng_step_.fill_(step_);
    }
    seen_version_ = rng_step_._version();
    return gen;
}

torch::Tensor uniform_on(torch::IntArrayRef sizes, at::Generator & gen, const torch::Device & device) {
    torch::Tensor u = torch::rand(sizes, gen);
    if (device.is_cpu()) return u;
    return u.pin_memory().to(device, /*non_blocking=*/true);
}

void RouterImpl::init_linear_(torch::nn::Linear & lin, at::Generator & gen) {
    torch::NoGradGuard ng;
    const double bound = 1.0 / std::sqrt(static_cast<double>(lin->weight.size(1)));
    lin->weight.uniform_(-bound, bound, gen);
    if (lin->bias.defined()) lin->bias.uniform_(-bound, bound, gen);
}

torch::Tensor weighted_mean(const torch::Tensor & v_T, const torch::Tensor & w_T) {
    if (!w_T.defined()) return v_T.mean();
    const torch::Tensor w = w_T.to(v_T.scalar_type());
    return (v_T * w).sum() / w.sum().clamp_min(1.0);
}

std::shared_ptr<RouterImpl> make_router(const MoeLayerConfig & cfg) {
    switch (router_kind(cfg)) {
        case RouterKind::kIda: return std::make_shared<IdaRouterImpl>(cfg);
        case RouterKind::kXMoe: return std::make_shared<XMoeRouterImpl>(cfg);
        case RouterKind::kAuxFree: return std::make_shared<AuxFreeRouterImpl>(cfg);
        case RouterKind::kLinearAux:
        case RouterKind::kStMoe:
        case RouterKind::kDeepSeek: return std::make_shared<LinearRouterImpl>(cfg);
    }
    throw std::invalid_argument("moe: unknown router kind");
}

// ---- config helpers (config.h) ----

RouterKind parse_router_kind(const std::string & name) {
    if (name == "ida") return RouterKind::kIda;
    if (name == "linear_aux") return RouterKind::kLinearAux;
    if (name == "st_moe") return RouterKind::kStMoe;
    if (name == "xmoe") return RouterKind::kXMoe;
    if (name == "auxfree") return RouterKind::kAuxFree;
    if (name == "deepseek") return RouterKind::kDeepSeek;
    throw std::invalid_argument("moe: unknown router '" + name +
                                "' (expected ida | linear_aux | st_moe | xmoe | auxfree | deepseek)");
}

std::string router_kind_name(RouterKind kind) {
    switch (kind) {
        case RouterKind::kIda: return "ida";
        case RouterKind::kLinearAux: return "linear_aux";
        case RouterKind::kStMoe: return "st_moe";
        case RouterKind::kXMoe: return "xmoe";
        case RouterKind::kAuxFree: return "auxfree";
        case RouterKind::kDeepSeek: return "deepseek";
    }
    return "?";
}

RouterKind router_kind(const MoeLayerConfig & cfg) { return parse_router_kind(cfg.router); }

MoeLayerConfig layer_config(const core::MoeConfig & m, int64_t layer_index, int64_t d_model, int64_t d_ff,
                            uint64_t seed) {
    MoeLayerConfig c;
    c.layer_index = layer_index, c.d_model = d_model, c.d_ff = d_ff, c.seed = seed;
    c.router = m.router, c.num_experts = m.num_experts, c.top_k = m.top_k, c.latent_dim = m.latent_dim;
    c.centers_per_expert = m.centers_per_expert, c.alpha = m.alpha, c.beta = m.beta, c.reactivation = m.reactivation;
    c.variance_floor = m.variance_floor, c.ae_hidden = m.ae_hidden, c.distinct_experts = m.distinct_experts;
    c.capacity_factor = m.capacity_factor, c.aux_coef = m.aux_coef, c.z_loss_coef = m.z_loss_coef;
    c.num_shared_experts = m.num_shared_experts, c.bias_update_rate = m.bias_update_rate;
    validate(c);
    return c;
}

void validate(const MoeLayerConfig & c) {
    const std::string where = "moe layer " + std::to_string(c.layer_index) + ": ";
    auto fail = [&](const std::string & msg) { throw std::invalid_argument(where + msg); };
    parse_router_kind(c.router);
    if (c.d_model <= 0 || c.d_ff <= 0)
        fail("d_model and d_ff must be > 0, got D=" + std::to_string(c.d_model) + " F=" + std::to_string(c.d_ff));
    if (c.num_experts < 1) fail("num_experts must be >= 1, got " + std::to_string(c.num_experts));
    if (c.top_k < 1 || c.top_k > c.num_experts)
        fail("top_k must be in [1, num_experts=" + std::to_string(c.num_experts) + "], got " +
             std::to_string(c.top_k));
    if (c.centers_per_expert < 1) fail("centers_per_expert (M) must be >= 1, got " + std::to_string(c.centers_per_expert));
    if (c.latent_dim < 1) fail("latent_dim must be >= 1, got " + std::to_string(c.latent_dim));
    if (c.ae_hidden < 1) fail("ae_hidden must be >= 1, got " + std::to_string(c.ae_hidden));
    if (!(c.variance_floor > 0.0)) fail("variance_floor must be > 0, got " + std::to_string(c.variance_floor));
    if (c.capacity_factor < 0.0) fail("capacity_factor must be >= 0 (0 = dropless), got " + std::to_string(c.capacity_factor));
    if (c.num_shared_experts < 0) fail("num_shared_experts must be >= 0");
    if (c.xmoe_dim < 1) fail("xmoe_dim must be >= 1");
}

}  // namespace idamoe::moe
