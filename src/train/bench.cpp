// defines: run_bench
#include "train/bench.h"

#include "core/autocast.h"
#include "core/config.h"
#include "core/runtime.h"
#include "io/hf_loader.h"
#include "model/decoder.h"
#include "model/projector.h"
#include "model/vision_tower.h"
#include "moe/moe_layer.h"
#include "train/flops.h"
#include "train/loop.h"
#include "train/stages.h"

#include <spdlog/spdlog.h>

#include <ATen/CPUGeneratorImpl.h>
#include <torch/csrc/autograd/profiler_legacy.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <numeric>
#include <sys/resource.h>

namespace idamoe::train {

namespace {

// Random tokens; with vision, I frozen-tower images per row are projected and prepended.
class BenchTask : public TrainTask {
public:
    BenchTask(model::CausalLM lm, model::VisionTower tower, model::Projector proj, const BenchOptions & o, torch::Device dev)
        : lm_(std::move(lm)), tower_(std::move(tower)), proj_(std::move(proj)), o_(o), dev_(dev),
          bf16_(core::check_compute_dtype(o.dtype, dev)), gen_(at::detail::createCPUGenerator(o.seed)) {}

    int64_t load_micro_batch(int64_t) override {
        if (o_.same_batch && ids_BT_.defined()) return o_.batch * (o_.seq - 1);
        ids_BT_ = at::randint(lm_->config().vocab_size, {o_.batch, o_.seq}, gen_, torch::kInt64).to(dev_);
        if (!first_ids_BT_.defined()) first_ids_BT_ = ids_BT_.cpu();
        if (!tower_.is_empty()) {
            const int64_t s = tower_->config().image_size;
            images_ICHW_ = at::randn({o_.batch * o_.images, 3, s, s}, gen_).to(dev_);
        }
        return o_.batch * (o_.seq - 1);
    }

    MicroBatchResult forward(int64_t) override {
        const core::AutocastScope autocast(bf16_);  // as the trainer: forward and loss, backward outside
        torch::Tensor x_BTD = lm_->embed(ids_BT_);
        int64_t n_img_tok = 0;
        if (!tower_.is_empty()) {
            torch::Tensor feats;
            {
                torch::NoGradGuard no_grad;  // the tower is frozen in every stage
                feats = tower_->features(images_ICHW_, -2);
            }
            torch::Tensor img_BND = proj_->forward(feats).reshape({o_.batch, -1, x_BTD.size(2)}).to(x_BTD.dtype());
            n_img_tok = img_BND.size(0) * img_BND.size(1);
            x_BTD = torch::cat({img_BND, x_BTD}, 1);
        }
        model::DecoderOutput out = lm_->forward_embeds(x_BTD, torch::Tensor());
        torch::Tensor labels_BT = ids_BT_;
        if (n_img_tok > 0)
            labels_BT = torch::cat({torch::full({o_.batch, x_BTD.size(1) - o_.seq}, -100, ids_BT_.options()), ids_BT_}, 1);
        MicroBatchResult r;
        r.ce_sum = model::causal_lm_loss_sum(out.logits_BTV, labels_BT).sum;
        r.aux_loss = out.aux_loss;
        r.n_tokens = o_.batch * x_BTD.size(1);
        r.shape.seq_lens.assign(static_cast<size_t>(o_.batch), x_BTD.size(1));
        r.shape.n_images = tower_.is_empty() ? 0 : o_.batch * o_.images;
        r.shape.n_image_tokens = n_img_tok;
        return r;
    }
    const torch::Tensor & first_ids() const { return first_ids_BT_; }
    double epoch() const override { return 0.0; }
    nlohmann::json data_state() const override { return nlohmann::json::object(); }
    void restore_data_state(const nlohmann::json &) override {}
    std::vector<std::pair<std::string, torch::Tensor>> named_parameters() override {
        std::vector<std::pair<std::string, torch::Tensor>> out;
        for (auto & p : lm_->named_parameters()) out.emplace_back(p.key(), p.value());
        if (!proj_.is_empty())
            for (auto & p : proj_->named_parameters()) out.emplace_back("model.mm_projector." + p.key(), p.value());
        return out;
    }

private:
    model::CausalLM lm_;
    model::VisionTower tower_;
    model::Projector proj_;
    BenchOptions o_;
    torch::Device dev_;
    bool bf16_;
    at::Generator gen_;
    torch::Tensor ids_BT_, images_ICHW_, first_ids_BT_;
};

double median(std::vector<double> v) {
    if (v.empty()) return 0.0;
    std::sort(v.begin(), v.end());
    const size_t n = v.size();
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

// Median GFLOP/s of a 1024x1024 fp32 matmul on the bench's device and threads: the practical ceiling the
// step's achieved GFLOP/s is compared with, measured in the same process so machine load affects both.
double matmul_reference_gflops(const torch::Device & dev) {
    torch::NoGradGuard no_grad;
    const auto a_NN = torch::randn({1024, 1024}, torch::TensorOptions().device(dev));
    const auto b_NN = torch::randn({1024, 1024}, torch::TensorOptions().device(dev));
    auto c_NN = torch::empty({1024, 1024}, a_NN.options());
    std::vector<double> s;
    for (int i = 0; i < 23; ++i) {
        const auto t0 = std::chrono::steady_clock::now();
        torch::mm_out(c_NN, a_NN, b_NN);
        if (dev.is_cuda()) c_NN.sum().item<float>();  // wait for the kernel
        const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        if (i >= 3) s.push_back(dt);
    }
    return 2.0 * 1024 * 1024 * 1024 / median(s) / 1e9;
}

}  // namespace

nlohmann::json run_bench(const BenchOptions & o) {
    core::set_compute_threads(static_cast<int>(o.threads));
    torch::manual_seed(o.seed);
    const bool cuda = torch::cuda::is_available() && o.device != "cpu";
    const torch::Device dev = cuda ? torch::Device(torch::kCUDA, 0) : torch::Device(torch::kCPU);
    model::CausalLM lm = io::load_causal_lm(o.model_dir);
    const auto & dc = lm->config();
    std::vector<int64_t> moe_layers;
    core::MoeConfig mc;
    if (!o.moe.empty()) {
        moe_layers = core::resolve_moe_layers("every_other", dc.num_layers);
        for (int64_t l : moe_layers) {
            moe::MoeLayerConfig c;
            c.layer_index = l;
            c.d_model = dc.hidden_size;
            c.d_ff = dc.intermediate_size;
            c.router = o.moe;
            c.num_experts = o.experts;
            c.top_k = o.top_k;
            c.seed = o.seed;
            lm->set_ffn(l, moe::upcycle(lm->ffn(l), c));
        }
    }
    model::VisionTower tower{nullptr};
    model::Projector proj{nullptr};
    if (!o.vision_dir.empty()) {
        tower = model::build_vision_tower(o.vision_dir);
        for (auto & p : tower->parameters()) p.set_requires_grad(false);
        model::ProjectorConfig pc;
        pc.d_vision = tower->hidden_size();
        pc.d_model = dc.hidden_size;
        proj = model::Projector(pc, o.seed);
        tower->to(dev);
        tower->eval();
        proj->to(dev);
    }
    lm->to(dev);
    lm->train();
    if (o.activation_checkpointing) lm->set_checkpointing(true);

    // FLOP model: everything in the decoder trains; the tower is forward-only.
    DecoderShape dec{dc.num_layers, dc.hidden_size, dc.intermediate_size, dc.vocab_size, dc.num_heads, dc.num_kv_heads, dc.head_dim};
    MoeShape ms;
    ms.layers = moe_layers;
    ms.top_k = o.top_k;
    if (!moe_layers.empty())
        for (auto & p : lm->ffn(moe_layers.front())->named_parameters())
            if (classify_param("model.layers.0.mlp." + p.key()) == ParamKind::router && p.value().dim() == 2) ms.router_params += p.value().numel();
    VisionShape vs;
    if (!tower.is_empty()) {
        const auto & vc = tower->config();
        vs = VisionShape{true, vc.n_layer - 1, vc.d_model, vc.d_ff, vc.patch_size, vc.n_channel, vc.n_patch(), vc.has_cls(), 0};
        for (auto & p : proj->parameters())
            if (p.dim() == 2) vs.proj_params += p.numel();
    }
    FlopModel flops(dec, ms, vs, TrainableParts{false, true, true, true, true, true, true});

    core::Config cfg;
    cfg.train.lr = o.lr;
    cfg.train.warmup_ratio = 0.0;
    cfg.train.min_lr_ratio = 1.0;  // constant lr, as the peer's plain AdamW
    cfg.train.weight_decay = 0.0;
    cfg.train.grad_clip = o.grad_clip;
    cfg.train.log_every = 1 << 30;
    cfg.train.stop_after = 0;
    cfg.data.grad_accum = 1;
    cfg.logging.jsonl = "";
    cfg.logging.progress_bar = false;
    BenchTask task(lm, tower, proj, o, dev);
    LoopOptions lo;
    lo.total_steps = o.warmup + o.steps;
    lo.flops = &flops;
    lo.checkpoints = false;
    lo.device_name = device_name(cuda, 0);
    RunResult r;
    if (const char * trace = std::getenv("IDAMOE_BENCH_TRACE")) {  // chrome trace of every op (all steps)
        torch::autograd::profiler::RecordProfile profile(std::string{trace});
        r = run_training(task, cfg, lo);
    } else {
        r = run_training(task, cfg, lo);
    }

    auto tail = [&](const std::vector<double> & v) { return std::vector<double>(v.begin() + std::min<size_t>(v.size(), o.warmup), v.end()); };
    const auto step_ms = tail(r.step_ms);
    const double total_s = std::accumulate(step_ms.begin(), step_ms.end(), 0.0) / 1e3;
    double tokens = 0, fl = 0;
    for (size_t i = static_cast<size_t>(o.warmup); i < r.tokens.size(); ++i) {
        tokens += static_cast<double>(r.tokens[i]);
        fl += r.step_flops[i];
    }
    rusage ru{};
    getrusage(RUSAGE_SELF, &ru);
    nlohmann::json j;
    j["model"] = o.model_dir;
    j["device"] = lo.device_name;
    j["threads"] = torch::get_num_threads();
    j["batch"] = o.batch;
    j["seq"] = o.seq;
    j["steps"] = o.steps;
    j["dtype"] = o.dtype;
    j["moe"] = o.moe.empty() ? "dense" : o.moe;
    if (!o.moe.empty()) {
        j["experts"] = o.experts;
        j["top_k"] = o.top_k;
        // tokens per expert in each MoE layer at the last step: a skewed load means fewer, taller expert GEMMs
        nlohmann::json counts = nlohmann::json::object();
        for (int64_t l : moe_layers) {
            const model::FfnAux * aux = lm->ffn(l)->aux();
            if (aux && aux->counts_E.defined()) {
                const auto c = aux->counts_E.to(torch::kCPU, torch::kLong).contiguous();
                counts[std::to_string(l)] = std::vector<int64_t>(c.data_ptr<int64_t>(), c.data_ptr<int64_t>() + c.numel());
            }
        }
        j["expert_counts_last_step"] = counts;
    }
    if (!o.vision_dir.empty()) { j["vision"] = o.vision_dir; j["images"] = o.images; }
    j["params_active_per_token"] = flops.active_params_per_token();
    j["tokens_per_s"] = total_s > 0 ? tokens / total_s : 0.0;
    j["step_s_median"] = median(step_ms) / 1e3;
    j["step_s_all"] = r.step_ms;
    for (auto & v : j["step_s_all"]) v = v.get<double>() / 1e3;
    // The peer's definition: all B*T input positions per median step.
    j["tokens_per_s_median"] = static_cast<double>(o.batch * o.seq) / (median(step_ms) / 1e3);
    j["step_gflop"] = r.step_flops.empty() ? 0.0 : r.step_flops.back() / 1e9;
    j["achieved_gflops_median"] = r.step_flops.empty() ? 0.0 : r.step_flops.back() / (median(step_ms) / 1e3) / 1e9;
    if (o.matmul_reference) j["matmul1024_gflops"] = matmul_reference_gflops(dev);
    j["same_batch"] = o.same_batch;
    j["lr"] = o.lr;
    const torch::Tensor & ids = task.first_ids();
    if (ids.defined())  // to check that the first batch is the peer's: sum and the first ids
        j["first_batch"] = {{"sum", ids.sum().item<int64_t>()}, {"head", std::vector<int64_t>(ids.data_ptr<int64_t>(), ids.data_ptr<int64_t>() + std::min<int64_t>(8, ids.numel()))}};
    j["step_breakdown_ms"] = {{"data", median(tail(r.data_ms))}, {"forward", median(tail(r.forward_ms))},
                              {"backward", median(tail(r.backward_ms))}, {"optimizer", median(tail(r.optimizer_ms))}};
    j["achieved_gflops"] = total_s > 0 ? fl / total_s / 1e9 : 0.0;
    const double peak = peak_flops_for_device(lo.device_name);
    if (peak > 0 && total_s > 0) j["mfu"] = fl / total_s / peak;
    j["peak_rss_mb"] = static_cast<double>(ru.ru_maxrss) / 1024.0;
    // whole process (load + all steps): page faults and kernel time show allocator churn
    j["minor_page_faults"] = static_cast<int64_t>(ru.ru_minflt);
    j["cpu_user_s"] = static_cast<double>(ru.ru_utime.tv_sec) + ru.ru_utime.tv_usec / 1e6;
    j["cpu_sys_s"] = static_cast<double>(ru.ru_stime.tv_sec) + ru.ru_stime.tv_usec / 1e6;
    j["final_loss"] = r.losses.empty() ? 0.0 : r.losses.back();
    j["losses"] = r.losses;
    return j;
}

}  // namespace idamoe::train
