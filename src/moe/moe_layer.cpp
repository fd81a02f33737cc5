// MoE layer, stage-2 router warm-up slot and upcycling; see moe_layer.h for names and the shape legend.
#include "moe/moe_layer.h"

#include <cmath>
#include <sstream>
#include <tuple>

namespace idamoe::moe {

namespace {

constexpr double kLn2 = 0.69314718055994530942;

// Statistics shared by the MoE layer and the warm-up slot. counts_E: real assignments before drops
// (device), kept: assignments that reached an expert (may be undefined = all kept).
void fill_stats(const RouteOut & r, const torch::Tensor & counts_E, const torch::Tensor & kept_E,
                const torch::Tensor & w_T, const RouterImpl & router, RoutingStats & st) {
    torch::NoGradGuard ng;
    const MoeLayerConfig & cfg = router.config();
    st.counts_E = counts_E.to(torch::kFloat);
    st.cv = st.counts_E.std(/*unbiased=*/true) / (st.counts_E.mean() + 1e-8);  // youzark/IDA_MoE compute_cv
    const torch::Tensor p_TN = r.probs_TN.to(torch::kFloat);
    st.entropy = weighted_mean(-torch::xlogy(p_TN, p_TN).sum(1) / kLn2, w_T);  // bits
    const torch::Tensor routed = st.counts_E.sum();
    st.drop_rate = kept_E.defined() ? (routed - kept_E.to(torch::kFloat).sum()) / routed.clamp_min(1.0)
                                    : torch::zeros({}, routed.options());
    const std::vector<torch::Tensor> pis = router.mixing_weights();
    st.pi_min = torch::Tensor();
    st.pi_small = torch::Tensor();
    if (!pis.empty()) {
        const torch::Tensor pi = torch::cat(pis).to(torch::kFloat);
        st.pi_min = pi.min();
        st.pi_small = (pi < 1.0 / (10.0 * cfg.num_experts * cfg.centers_per_expert)).sum().to(torch::kFloat);
    }
}

void fill_aux(const RouteOut & r, const RoutingStats & st, const torch::Tensor & topk_idx_TK,
              const torch::Tensor & topk_gates_TK, const torch::Tensor & probs_TN, model::FfnAux & aux) {
    aux.loss = r.loss;
    aux.parts.clear();
    for (const char * k : {"ae", "gmm", "react", "aux", "z"}) {
        auto it = r.parts.find(k);
        if (it != r.parts.end()) aux.parts[k] = it->second;
    }
    aux.counts_E = st.counts_E;
    aux.entropy = st.entropy;
    aux.topk_idx_TK = topk_idx_TK;
    aux.topk_gates_TK = topk_gates_TK;
    aux.probs_TN = probs_TN;
}

// Real rows of idx_TK in their original order (padding rows last, then cut off).
torch::Tensor real_rows_first(const torch::Tensor & idx_TK, const torch::Tensor & w_T, int64_t n_real) {
    if (!idx_TK.defined()) return {};
    if (!w_T.defined()) return idx_TK.detach();
    const torch::Tensor order = std::get<1>(torch::sort((w_T <= 0).to(torch::kInt), /*stable=*/true, 0, false));
    return idx_TK.index_select(0, order.narrow(0, 0, n_real)).detach();
}

torch::Tensor flat_weights(const torch::Tensor & mask_BT, const torch::Tensor & x_BTD) {
    if (!mask_BT.defined()) return {};
    TORCH_CHECK(mask_BT.dim() == 2 && mask_BT.size(0) == x_BTD.size(0) && mask_BT.size(1) == x_BTD.size(1),
                "moe: expected mask [", x_BTD.size(0), ", ", x_BTD.size(1), "], got ", mask_BT.sizes());
    return mask_BT.reshape({-1}).to(torch::kFloat);
}

}  // namespace

MoeLayerImpl::MoeLayerImpl(const MoeLayerConfig & cfg, std::shared_ptr<RouterImpl> r) : cfg_(cfg) {
    validate(cfg_);
    experts = register_module("experts", torch::nn::ModuleList());
    for (int64_t i = 0; i < cfg_.num_experts; ++i) experts->push_back(SwiGluFfn(cfg_.d_model, cfg_.d_ff));
    if (router_kind(cfg_) == RouterKind::kDeepSeek && cfg_.num_shared_experts > 0) {
        shared_experts = register_module("shared_experts", torch::nn::ModuleList());
        for (int64_t i = 0; i < cfg_.num_shared_experts; ++i) shared_experts->push_back(SwiGluFfn(cfg_.d_model, cfg_.d_ff));
    }
    router = register_module("router", r ? r : make_router(cfg_));
}

std::vector<SwiGluFfnImpl *> MoeLayerImpl::expert_ptrs() const {
    std::vector<SwiGluFfnImpl *> out;
    for (const auto & m : *experts) out.push_back(m->as<SwiGluFfnImpl>());
    return out;
}

torch::Tensor MoeLayerImpl::forward(const torch::Tensor & x_BTD, const torch::Tensor & mask_BT) {
    const int64_t D = cfg_.d_model, N = cfg_.num_experts;
    TORCH_CHECK(x_BTD.dim() == 3 && x_BTD.size(2) == D, "moe layer ", cfg_.layer_index, ": expected x [B, T, ", D,
                "], got ", x_BTD.sizes());
    const torch::Tensor x_TD = x_BTD.reshape({-1, D});
    const torch::Tensor w_T = flat_weights(mask_BT, x_BTD);

    // router: K experts and gates per row (every row; padding is excluded below and in the router's losses)
    RouteOut r = router->route(x_TD, w_T);
    torch::Tensor idx_TK = r.idx_TK, gates_TK = r.gates_TK;
    if (w_T.defined()) idx_TK = idx_TK.masked_fill((w_T <= 0).unsqueeze(1), N);  // padding: never routed
    const torch::Tensor routed_E1 = count_assignments(idx_TK, N);
    torch::Tensor kept_E1 = routed_E1;
    if (cfg_.capacity_factor > 0.0) {  // baseline: DeepSpeed capacity, drop overflow, renormalise survivors
        std::tie(idx_TK, gates_TK) = apply_capacity(idx_TK, gates_TK, N, cfg_.capacity_factor);
        kept_E1 = count_assignments(idx_TK, N);
    }
    // the one host sync of the layer: slice sizes for the experts (routed counts ride along)
    const torch::Tensor host = torch::stack({kept_E1, routed_E1}).to(torch::kCPU);

    // dispatch -> experts -> combine
    torch::Tensor y_TD = dispatch_combine(x_TD, idx_TK, gates_TK, host[0], expert_ptrs());
    if (shared_experts) {  // DeepSeekMoE: shared experts see every real token, ungated
        torch::Tensor s_TD = torch::zeros_like(x_TD);
        for (const auto & m : *shared_experts) s_TD = s_TD + m->as<SwiGluFfnImpl>()->apply(x_TD);
        if (w_T.defined()) s_TD = s_TD * w_T.to(s_TD.scalar_type()).unsqueeze(1);
        y_TD = y_TD + s_TD;
    }

    const torch::Tensor routed_E = routed_E1.narrow(0, 0, N);
    router->observe_load(routed_E);
    fill_stats(r, routed_E, kept_E1.narrow(0, 0, N), w_T, *router, stats_);
    const int64_t n_real = host[1].narrow(0, 0, N).sum().item<int64_t>() / cfg_.top_k;  // host tensor: no sync
    fill_aux(r, stats_, real_rows_first(r.idx_TK, w_T, n_real), real_rows_first(r.gates_TK, w_T, n_real),
             real_rows_first(r.probs_TN, w_T, n_real), aux_);
    return y_TD.view(x_BTD.sizes());
}

RouterWarmupFfnImpl::RouterWarmupFfnImpl(std::shared_ptr<model::FfnImpl> d, const MoeLayerConfig & cfg)
    : dense(std::move(d)), cfg_(cfg) {
    TORCH_CHECK(dense, "router warm-up (layer ", cfg.layer_index, "): dense FFN is null");
    validate(cfg_);
    // Share the dense FFN's submodules and own tensors under their own names: mlp.gate_proj.weight stays.
    for (const auto & kv : dense->named_children()) register_module(kv.key(), kv.value());
    for (const auto & kv : dense->named_parameters(/*recurse=*/false))
        register_parameter(kv.key(), kv.value(), kv.value().requires_grad());
    for (const auto & kv : dense->named_buffers(/*recurse=*/false)) register_buffer(kv.key(), kv.value());
    TORCH_CHECK(!named_children().contains("router"), "router warm-up (layer ", cfg.layer_index,
                "): the dense FFN already has a child named 'router'");
    router = register_module("router", make_router(cfg_));
}

torch::Tensor RouterWarmupFfnImpl::forward(const torch::Tensor & x_BTD, const torch::Tensor & mask_BT) {
    const int64_t D = cfg_.d_model, N = cfg_.num_experts;
    TORCH_CHECK(x_BTD.dim() == 3 && x_BTD.size(2) == D, "router warm-up (layer ", cfg_.layer_index,
                "): expected x [B, T, ", D, "], got ", x_BTD.sizes());
    const torch::Tensor y_BTD = dense->forward(x_BTD, mask_BT);
    const torch::Tensor w_T = flat_weights(mask_BT, x_BTD);
    RouteOut r = router->route(x_BTD.reshape({-1, D}), w_T);  // losses + statistics only
    torch::Tensor idx_TK = r.idx_TK;
    if (w_T.defined()) idx_TK = idx_TK.masked_fill((w_T <= 0).unsqueeze(1), N);
    fill_stats(r, count_assignments(idx_TK, N).narrow(0, 0, N), {}, w_T, *router, stats_);
    fill_aux(r, stats_, torch::Tensor(), torch::Tensor(), torch::Tensor(), aux_);  // no host sync here: the decisions are not used
    return y_BTD;
}

namespace {

struct DenseWeights {
    torch::Tensor gate, up, down;
};

DenseWeights dense_weights(const model::FfnImpl & dense, const MoeLayerConfig & cfg) {
    const auto params = dense.named_parameters(/*recurse=*/true);
    const std::string where = "upcycle (layer " + std::to_string(cfg.layer_index) + "): ";
    auto get = [&](const std::string & name, std::vector<int64_t> shape) {
        const torch::Tensor * p = params.find(name);
        if (p == nullptr) throw std::invalid_argument(where + "dense FFN has no parameter '" + name + "'");
        if (p->sizes() != torch::IntArrayRef(shape)) {
            std::ostringstream os;
            os << where << name << ": expected [" << shape[0] << ", " << shape[1] << "] (d_model=" << cfg.d_model
               << ", d_ff=" << cfg.d_ff << "), got " << p->sizes();
            throw std::invalid_argument(os.str());
        }
        return p->detach();
    };
    return {get("gate_proj.weight", {cfg.d_ff, cfg.d_model}), get("up_proj.weight", {cfg.d_ff, cfg.d_model}),
            get("down_proj.weight", {cfg.d_model, cfg.d_ff})};
}

void copy_into(SwiGluFfnImpl & e, const DenseWeights & w) {
    torch::NoGradGuard ng;
    e.to(w.gate.device(), w.gate.scalar_type());
    e.gate_proj->weight.copy_(w.gate);
    e.up_proj->weight.copy_(w.up);
    e.down_proj->weight.copy_(w.down);
}

}  // namespace

std::shared_ptr<model::FfnImpl> upcycle(const std::shared_ptr<model::FfnImpl> & dense, const MoeLayerConfig & cfg) {
    validate(cfg);
    if (!dense) throw std::invalid_argument("upcycle (layer " + std::to_string(cfg.layer_index) + "): dense FFN is null");
    std::shared_ptr<RouterImpl> warm;
    const model::FfnImpl * src = dense.get();
    if (auto rw = std::dynamic_pointer_cast<RouterWarmupFfnImpl>(dense)) {
        if (router_kind(rw->router->config()) != router_kind(cfg))
            throw std::invalid_argument("upcycle (layer " + std::to_string(cfg.layer_index) + "): warmed-up router is '" +
                                        rw->router->config().router + "', config asks for '" + cfg.router + "'");
        warm = rw->router;
        src = rw->dense.get();
    }
    const DenseWeights w = dense_weights(*src, cfg);
    auto moe = std::make_shared<MoeLayerImpl>(cfg, warm);
    for (auto * e : moe->expert_ptrs()) copy_into(*e, w);  // MoE-LLaVA: deepcopy of the dense FFN per expert
    if (moe->shared_experts)
        for (const auto & m : *moe->shared_experts) copy_into(*m->as<SwiGluFfnImpl>(), w);
    moe->router->to(w.gate.device());
    return moe;
}

std::shared_ptr<model::FfnImpl> attach_router_warmup(const std::shared_ptr<model::FfnImpl> & dense,
                                                     const MoeLayerConfig & cfg) {
    validate(cfg);
    dense_weights(*dense, cfg);  // same shape checks as upcycle, so stage 2 fails early on a wrong config
    auto rw = std::make_shared<RouterWarmupFfnImpl>(dense, cfg);
    rw->router->to(dense_weights(*dense, cfg).gate.device());
    return rw;
}

}  // namespace idamoe::moe
