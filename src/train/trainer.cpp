// defines: run_stage (and its pieces: stage model construction, LlavaTask, loader source, export)
//
// Legend: B batch, T tokens, I images.
#include "train/trainer.h"

#include "core/autocast.h"
#include "core/log.h"

#include "data/dataset.h"
#include "data/loader.h"
#include "data/pipeline.h"
#include "data/tokenizer.h"
#include "dist/comm.h"
#include "dist/global.h"
#include "dist/grad_reducer.h"
#include "dist/launch_env.h"
#include "io/checkpoint.h"
#include "io/hf_loader.h"
#include "model/llava.h"
#include "moe/moe_layer.h"
#include "train/export.h"
#include "train/flops.h"
#include "train/loop.h"
#include "train/schedule.h"
#include "train/stages.h"

#include <spdlog/spdlog.h>

#include <filesystem>
#include <fstream>

namespace fs = std::filesystem;

namespace idamoe::train {

namespace {

// ---------------------------------------------------------------------------------------------------
// Model construction per stage

moe::MoeLayerConfig layer_config(const core::MoeConfig & m, const model::DecoderConfig & dc, int64_t layer, uint64_t seed) {
    return moe::layer_config(m, layer, dc.hidden_size, dc.intermediate_size, seed);
}

nlohmann::json moe_json(const core::MoeConfig & m) {
    return {{"router", m.router}, {"num_experts", m.num_experts}, {"top_k", m.top_k}, {"latent_dim", m.latent_dim},
            {"centers_per_expert", m.centers_per_expert}, {"alpha", m.alpha}, {"beta", m.beta},
            {"reactivation", m.reactivation}, {"variance_floor", m.variance_floor}, {"ae_hidden", m.ae_hidden},
            {"distinct_experts", m.distinct_experts}, {"capacity_factor", m.capacity_factor}, {"aux_coef", m.aux_coef},
            {"z_loss_coef", m.z_loss_coef}, {"num_shared_experts", m.num_shared_experts},
            {"bias_update_rate", m.bias_update_rate}};
}

core::MoeConfig moe_from_json(const nlohmann::json & j) {
    core::MoeConfig m;
    m.router = j.value("router", m.router);
    m.num_experts = j.value("num_experts", m.num_experts);
    m.top_k = j.value("top_k", m.top_k);
    m.latent_dim = j.value("latent_dim", m.latent_dim);
    m.centers_per_expert = j.value("centers_per_expert", m.centers_per_expert);
    m.alpha = j.value("alpha", m.alpha);
    m.beta = j.value("beta", m.beta);
    m.reactivation = j.value("reactivation", m.reactivation);
    m.variance_floor = j.value("variance_floor", m.variance_floor);
    m.ae_hidden = j.value("ae_hidden", m.ae_hidden);
    m.distinct_experts = j.value("distinct_experts", m.distinct_experts);
    m.capacity_factor = j.value("capacity_factor", m.capacity_factor);
    m.aux_coef = j.value("aux_coef", m.aux_coef);
    m.z_loss_coef = j.value("z_loss_coef", m.z_loss_coef);
    m.num_shared_experts = j.value("num_shared_experts", m.num_shared_experts);
    m.bias_update_rate = j.value("bias_update_rate", m.bias_update_rate);
    return m;
}

nlohmann::json read_json(const std::string & path) {
    std::ifstream in(path);
    if (!in) throw std::runtime_error("cannot read " + path);
    return nlohmann::json::parse(in);
}

model::LlavaModel make_llava(model::CausalLM llm, const core::Config & cfg, const model::DecoderConfig & dc,
                             const std::string & config_path) {
    model::VisionTower tower{nullptr};
    model::Projector projector{nullptr};
    if (!cfg.vision.path.empty()) {
        tower = model::build_vision_tower(cfg.vision.path);
        for (auto & p : tower->parameters()) p.set_requires_grad(false);
        model::ProjectorConfig pc;
        pc.type = cfg.projector.type;
        pc.d_vision = tower->hidden_size();
        pc.d_model = dc.hidden_size;
        projector = model::Projector(pc, static_cast<uint64_t>(cfg.train.seed));
    }
    return model::LlavaModel(llm, tower, projector, cfg.vision.select_layer, cfg.vision.select_feature, config_path);
}

}  // namespace

StageModel load_stage_export(const std::string & dir, const core::Config & cfg) {
    StageModel sm;
    sm.init_dir = dir;
    const std::string cfg_path = (fs::path(dir) / "config.json").string();
    sm.base_config = read_json(cfg_path);
    const nlohmann::json info = sm.base_config.value("idamoe", nlohmann::json::object());
    sm.from_stage = info.value("stage", int64_t{0});
    if (sm.from_stage == 0) throw core::ConfigError(cfg_path + " is not an idamoe stage output (no idamoe.stage)");
    sm.base_config.erase("idamoe");
    sm.base_config.erase("moe");
    model::CausalLM llm(model::decoder_config_from_json(sm.base_config, cfg_path));
    sm.dc = llm->config();
    // Rebuild the FFN slots the export holds, then load every tensor strictly by name.
    sm.moe_cfg = moe_from_json(info.value("moe", nlohmann::json::object()));
    sm.router_layers = info.value("router_layers", std::vector<int64_t>{});
    sm.moe_layers = info.value("moe_layers", std::vector<int64_t>{});
    const auto seed = static_cast<uint64_t>(cfg.train.seed);
    for (int64_t l : sm.router_layers) llm->set_ffn(l, moe::attach_router_warmup(llm->ffn(l), layer_config(sm.moe_cfg, sm.dc, l, seed)));
    for (int64_t l : sm.moe_layers) llm->set_ffn(l, moe::upcycle(llm->ffn(l), layer_config(sm.moe_cfg, sm.dc, l, seed)));
    sm.llava = make_llava(llm, cfg, sm.dc, cfg_path);
    io::load_state_strict(*sm.llava, io::load_checkpoint_dir(dir), dir);
    return sm;
}

StageModel build_stage_model(const core::Config & cfg) {
    const int64_t stage = cfg.train.stage;
    StageModel sm;
    if (stage == 1) {
        model::CausalLM llm = io::load_causal_lm(cfg.model.llm_path);
        sm.dc = llm->config();
        sm.base_config = read_json((fs::path(cfg.model.llm_path) / "config.json").string());
        sm.llava = make_llava(llm, cfg, sm.dc, (fs::path(cfg.model.llm_path) / "config.json").string());
    } else {
        std::string dir;
        try {
            dir = resolve_init_dir(cfg.train.init_from);
        } catch (const std::exception & e) {
            throw core::ConfigError(std::string("stage ") + std::to_string(stage) + ": " + e.what());
        }
        const int64_t prev = read_json((fs::path(dir) / "config.json").string()).value("idamoe", nlohmann::json::object()).value("stage", int64_t{0});
        if (prev != stage - 1)
            throw core::ConfigError("stage " + std::to_string(stage) + " starts from a stage-" + std::to_string(stage - 1) +
                                    " output, but train.init_from (" + cfg.train.init_from + " -> " + dir + ") " +
                                    (prev == 0 ? std::string("is not an idamoe stage output (no idamoe.stage in config.json)")
                                               : "holds a stage-" + std::to_string(prev) + " output") +
                                    "; point train.init_from at the stage-" + std::to_string(stage - 1) + " run's output_dir");
        sm = load_stage_export(dir, cfg);
    }
    model::CausalLM & llm = sm.llava->llm();
    const auto layers = core::resolve_moe_layers(cfg.moe.layers, sm.dc.num_layers);
    const auto seed = static_cast<uint64_t>(cfg.train.seed);
    if (stage == 2 && cfg.moe.router == "ida") {
        // IDA-MoE: the GMM router warms up on the dense model's hidden states before upcycling.
        for (int64_t l : layers) llm->set_ffn(l, moe::attach_router_warmup(llm->ffn(l), layer_config(cfg.moe, sm.dc, l, seed)));
        sm.router_layers = layers;
        sm.moe_cfg = cfg.moe;
    } else if (stage == 3) {
        if (!sm.router_layers.empty() && sm.router_layers != layers)
            throw core::ConfigError("stage 3: moe.layers resolves to " + nlohmann::json(layers).dump() +
                                    " but the stage-2 routers warmed up at " + nlohmann::json(sm.router_layers).dump());
        if (!sm.router_layers.empty() && sm.moe_cfg.router != cfg.moe.router) {
            // A baseline router compared from the same stage-2 checkpoint (IDA-MoE Table 2 protocol):
            // the warmed-up IDA router has nothing to give it, so the experts upcycle from the dense FFNs.
            spdlog::warn("stage 3: moe.router is {}; the stage-2 {} routers are dropped and the experts upcycle from "
                         "the dense FFNs", cfg.moe.router, sm.moe_cfg.router);
            for (int64_t l : sm.router_layers)
                if (auto rw = std::dynamic_pointer_cast<moe::RouterWarmupFfnImpl>(llm->ffn(l))) llm->set_ffn(l, rw->dense);
        }
        for (int64_t l : layers) llm->set_ffn(l, moe::upcycle(llm->ffn(l), layer_config(cfg.moe, sm.dc, l, seed)));
        sm.router_layers.clear();
        sm.moe_layers = layers;
        sm.moe_cfg = cfg.moe;
    }
    return sm;
}

namespace {

// ---------------------------------------------------------------------------------------------------
// Data

class LoaderSource : public BatchSource {
public:
    // `batch_size`: data.batch_size for data.train, core::phase_batch_size for a curriculum phase.
    LoaderSource(const core::Config & cfg, const std::vector<core::DatasetEntry> & files, std::shared_ptr<data::Tokenizer> tok,
                 int64_t rank, int64_t world, int64_t batch_size)
        : tok_(std::move(tok)) {
        ds_ = std::make_shared<data::LlavaDataset>(files, cfg.data.template_name, cfg.data.max_bad_fraction);
        data::LoaderOptions opt = data::loader_options(cfg, rank, world);
        opt.batch_size = batch_size;
        loader_ = std::make_unique<data::DataLoader>(ds_, tok_, opt);
        per_epoch_ = std::max<int64_t>(1, loader_->batches_per_epoch());
    }
    data::Batch next() override { return loader_->next(); }
    double epoch() const override {
        const auto p = loader_->position();
        return static_cast<double>(p.epoch) + static_cast<double>(p.offset) / static_cast<double>(per_epoch_);
    }
    nlohmann::json state() const override { return loader_->state(); }
    void load_state(const nlohmann::json & s) override { loader_->load_state(s); }
    int64_t num_samples() const override { return static_cast<int64_t>(ds_->size()); }
    std::string bad_sample_summary() const override {
        return loader_->runtime_bad().count() > 0 ? loader_->runtime_bad().summary() : std::string();
    }

private:
    std::shared_ptr<data::LlavaDataset> ds_;
    std::shared_ptr<data::Tokenizer> tok_;
    std::unique_ptr<data::DataLoader> loader_;
    int64_t per_epoch_ = 1;
};

// data.curriculum: each phase's files for its steps (steps x grad_accum micro-batches, the same count on every
// rank), then data.train for the rest of the run. data.train's loader is open from the start (its size sets
// the schedule; its workers build its first batches ahead); a phase's loader lives for that phase. The
// state names the phase and how far into it the run is, so a resume continues inside the same phase.
class CurriculumSource : public BatchSource {
public:
    CurriculumSource(const core::Config & cfg, int64_t rank, int64_t world)
        : cfg_(cfg), rank_(rank), world_(world), tok_(data::load_tokenizer(data::tokenizer_path(cfg))) {
        for (const auto & p : cfg.data.curriculum) phase_micro_.push_back(p.steps * cfg.data.grad_accum);
        main_ = std::make_unique<LoaderSource>(cfg_, cfg_.data.train, tok_, rank_, world_, cfg_.data.batch_size);
        open(0);
    }
    data::Batch next() override {
        while (phase_ < phases() && in_phase_ >= phase_micro_[static_cast<size_t>(phase_)]) {
            const core::CurriculumPhase & p = cfg_.data.curriculum[static_cast<size_t>(phase_)];
            spdlog::info("data: curriculum phase {} done ({} steps, batch {}); next: {}", phase_, p.steps,
                         core::phase_batch_size(cfg_.data, p),
                         phase_ + 1 < phases() ? "phase " + std::to_string(phase_ + 1) : std::string("data.train"));
            open(phase_ + 1);
        }
        ++in_phase_;
        return current().next();
    }
    double epoch() const override { return current().epoch(); }
    nlohmann::json state() const override {
        return {{"curriculum_steps", steps()}, {"phase", phase_}, {"in_phase", in_phase_}, {"loader", current().state()}};
    }
    void load_state(const nlohmann::json & s) override {
        if (!s.is_object() || !s.contains("curriculum_steps"))
            throw data::DataError("the checkpoint's data state has no curriculum: that run was started without data.curriculum");
        if (s.at("curriculum_steps") != steps())
            throw data::DataError("the checkpoint's data.curriculum steps " + s.at("curriculum_steps").dump() + " differ from this config's " +
                                  nlohmann::json(steps()).dump());
        open(s.at("phase").get<int64_t>());
        in_phase_ = s.at("in_phase").get<int64_t>();
        current().load_state(s.at("loader"));
    }
    int64_t num_samples() const override { return main_->num_samples(); }
    std::string bad_sample_summary() const override {
        std::string out = closed_bad_;
        for (const BatchSource * src : {static_cast<const BatchSource *>(phase_src_.get()), static_cast<const BatchSource *>(main_.get())})
            if (src) append_bad(out, src->bad_sample_summary());
        return out;
    }

private:
    int64_t phases() const { return static_cast<int64_t>(phase_micro_.size()); }
    std::vector<int64_t> steps() const {
        std::vector<int64_t> v;
        for (const auto & p : cfg_.data.curriculum) v.push_back(p.steps);
        return v;
    }
    void open(int64_t phase) {
        if (phase < 0 || phase > phases()) throw data::DataError("curriculum phase " + std::to_string(phase) + " out of range");
        phase_ = phase;
        in_phase_ = 0;
        if (phase_src_) append_bad(closed_bad_, phase_src_->bad_sample_summary());  // kept for the end-of-run summary
        phase_src_.reset();  // stops the previous phase's workers
        if (phase < phases()) {
            const auto & p = cfg_.data.curriculum[static_cast<size_t>(phase)];
            phase_src_ = std::make_unique<LoaderSource>(cfg_, p.train, tok_, rank_, world_, core::phase_batch_size(cfg_.data, p));
        }
    }
    static void append_bad(std::string & out, const std::string & s) {
        if (!s.empty()) out += (out.empty() ? "" : "; ") + s;
    }
    BatchSource & current() const { return phase_src_ ? *phase_src_ : *main_; }

    const core::Config & cfg_;
    int64_t rank_, world_;
    std::shared_ptr<data::Tokenizer> tok_;  // one for all phases' loaders
    std::vector<int64_t> phase_micro_;
    std::string closed_bad_;                 // bad-sample summaries of the phases already done
    std::unique_ptr<LoaderSource> main_, phase_src_;
    int64_t phase_ = 0, in_phase_ = 0;
};

// ---------------------------------------------------------------------------------------------------
// The task the loop trains

class LlavaTask : public TrainTask {
public:
    LlavaTask(StageModel & sm, BatchSource & src, torch::Device device, bool autocast_bf16)
        : sm_(sm), src_(src), device_(device), autocast_bf16_(autocast_bf16) {}

    int64_t load_micro_batch(int64_t i) override {
        if (static_cast<int64_t>(slots_.size()) <= i) slots_.resize(static_cast<size_t>(i) + 1);
        slots_[static_cast<size_t>(i)] = src_.next();
        return slots_[static_cast<size_t>(i)].n_target_tokens;
    }
    // The routers' losses are means over the rows the attention mask marks real (moe/router.h).
    int64_t aux_rows(int64_t i) const override {
        return slots_[static_cast<size_t>(i)].attention_mask.sum().item<int64_t>();
    }

    MicroBatchResult forward(int64_t i) override {
        const data::Batch & b = slots_[static_cast<size_t>(i)];
        auto ids_BT = b.input_ids.to(device_), mask_BT = b.attention_mask.to(device_), labels_BT = b.labels.to(device_);
        torch::Tensor images_ICHW = b.images.defined() ? b.images.to(device_) : torch::Tensor();
        // model.dtype bfloat16 on CUDA: forward and loss under bf16 autocast, fp32 master weights; backward
        // runs outside the scope, as autocast requires (core/autocast.h; checked on an H100, docs/gpu.md).
        const core::AutocastScope autocast(autocast_bf16_);
        model::LlavaOutput out = sm_.llava->forward(ids_BT, mask_BT, images_ICHW);
        MicroBatchResult r;
        auto ls = model::causal_lm_loss_sum(out.logits_BTV, labels_BT.masked_fill(ids_BT == model::kImageTokenId, model::kIgnoreIndex));
        r.ce_sum = ls.sum;
        r.aux_loss = out.aux_loss;
        std::vector<int64_t> slots = sm_.moe_layers.empty() ? sm_.router_layers : sm_.moe_layers;
        for (int64_t l : slots) {
            const model::FfnAux * aux = sm_.llava->llm()->ffn(l)->aux();
            if (!aux) continue;
            for (const auto & [k, v] : aux->parts)
                if (v.defined()) r.parts[k] += v.detach().item<double>();
            if (aux->counts_E.defined()) r.counts_E[l] = aux->counts_E.detach();
            if (aux->entropy.defined()) r.entropy[l] = aux->entropy.detach();
        }
        auto lens = b.attention_mask.sum(1);
        r.n_tokens = lens.sum().item<int64_t>();
        r.bad_samples = b.n_bad_samples;
        for (int64_t k = 0; k < lens.size(0); ++k) r.shape.seq_lens.push_back(lens[k].item<int64_t>());
        r.shape.n_images = b.images.defined() ? b.images.size(0) : 0;
        r.shape.n_image_tokens = (b.input_ids == model::kImageTokenId).sum().item<int64_t>();
        return r;
    }

    double epoch() const override { return src_.epoch(); }
    nlohmann::json data_state() const override { return src_.state(); }
    void restore_data_state(const nlohmann::json & s) override { src_.load_state(s); }

    std::vector<std::pair<std::string, torch::Tensor>> named_parameters() override {
        std::vector<std::pair<std::string, torch::Tensor>> out;
        for (auto & p : sm_.llava->named_parameters()) out.emplace_back(p.key(), p.value());
        return out;
    }
    // Trainable weights plus every buffer (router RNG counters, aux-free biases): both change in training.
    io::TensorMap checkpoint_weights() override {
        io::TensorMap out = TrainTask::checkpoint_weights();
        for (auto & b : sm_.llava->named_buffers()) out["buffer/" + b.key()] = b.value().detach();
        return out;
    }
    void load_checkpoint_weights(const io::TensorMap & weights) override {
        io::TensorMap params;
        std::map<std::string, torch::Tensor> buffers;
        for (auto & b : sm_.llava->named_buffers()) buffers[b.key()] = b.value();
        torch::NoGradGuard no_grad;
        for (const auto & [k, v] : weights) {
            if (k.rfind("buffer/", 0) == 0) {
                auto it = buffers.find(k.substr(7));
                if (it == buffers.end()) throw io::CheckpointError("checkpoint buffer '" + k.substr(7) + "' does not exist in this model");
                it->second.copy_(v);
            } else {
                params[k] = v;
            }
        }
        TrainTask::load_checkpoint_weights(params);
    }
    nlohmann::json checkpoint_info() const override {
        return {{"init_from", sm_.init_dir}, {"moe_layers", sm_.moe_layers}, {"router_layers", sm_.router_layers}};
    }

private:
    StageModel & sm_;
    BatchSource & src_;
    torch::Device device_;
    bool autocast_bf16_ = false;
    std::vector<data::Batch> slots_;
};

FlopModel make_flop_model(StageModel & sm, const core::Config & cfg) {
    const auto & d = sm.dc;
    DecoderShape dec{d.num_layers, d.hidden_size, d.intermediate_size, d.vocab_size, d.num_heads, d.num_kv_heads, d.head_dim};
    MoeShape moe;
    moe.layers = sm.moe_layers;
    moe.top_k = sm.moe_cfg.top_k;
    moe.n_shared = sm.moe_cfg.router == "deepseek" ? sm.moe_cfg.num_shared_experts : 0;
    if (!sm.moe_layers.empty()) {
        int64_t n = 0;
        for (auto & p : sm.llava->llm()->ffn(sm.moe_layers.front())->named_parameters())
            if (classify_param("model.layers.0.mlp." + p.key()) == ParamKind::router && p.value().dim() == 2) n += p.value().numel();
        moe.router_params = n;
    }
    VisionShape vis;
    if (sm.llava->has_vision()) {
        const auto & vc = sm.llava->vision_tower()->config();
        vis.present = true;
        vis.n_layer_run = cfg.vision.select_layer < 0 ? vc.n_layer + 1 + cfg.vision.select_layer : cfg.vision.select_layer;
        vis.d = vc.d_model;
        vis.d_mlp = vc.d_ff;
        vis.patch = vc.patch_size;
        vis.channels = vc.n_channel;
        vis.n_patches = vc.n_patch();
        vis.cls_token = vc.has_cls();
        int64_t n = 0;
        for (auto & p : sm.llava->projector()->parameters())
            if (p.dim() == 2) n += p.numel();
        vis.proj_params = n;
    }
    TrainableParts parts;
    for (auto & p : sm.llava->named_parameters()) {
        if (!p.value().requires_grad()) continue;
        switch (classify_param(p.key())) {
            case ParamKind::projector: parts.projector = true; break;
            case ParamKind::embed: parts.embed = true; break;
            case ParamKind::attention: parts.attention = true; break;
            case ParamKind::ffn: case ParamKind::expert: parts.ffn = true; break;
            case ParamKind::router: parts.router = true; break;
            case ParamKind::lm_head: parts.lm_head = true; break;
            default: break;
        }
    }
    if (d.tie_word_embeddings) parts.lm_head = parts.lm_head || parts.embed;
    return FlopModel(dec, moe, vis, parts);
}

std::string export_stage(StageModel & sm, const core::Config & cfg) {
    nlohmann::json conf = sm.base_config;
    nlohmann::json info = {{"stage", cfg.train.stage}, {"format", 1},
                           {"vision", {{"path", cfg.vision.path}, {"select_layer", cfg.vision.select_layer},
                                       {"select_feature", cfg.vision.select_feature}}},
                           {"projector", cfg.projector.type}};
    if (!sm.router_layers.empty() || !sm.moe_layers.empty()) info["moe"] = moe_json(sm.moe_cfg);
    if (!sm.router_layers.empty()) info["router_layers"] = sm.router_layers;
    if (!sm.moe_layers.empty()) {
        info["moe_layers"] = sm.moe_layers;
        // MoE-LLaVA's config.moe block (moe_llava_protocol.md §3.5), for readers of that format.
        conf["moe"] = {{"moe_enable", true}, {"moe_mode", cfg.moe.layers}, {"moe_layers_idx", sm.moe_layers},
                       {"ep_size", 1}, {"top_k_experts", sm.moe_cfg.top_k},
                       {"capacity_factor", sm.moe_cfg.capacity_factor}, {"router_aux_loss_coef", sm.moe_cfg.aux_coef},
                       {"num_experts", std::vector<int64_t>(sm.moe_layers.size(), sm.moe_cfg.num_experts)}};
    }
    conf["idamoe"] = info;
    if (sm.llava->has_vision()) {
        conf["mm_vision_tower"] = cfg.vision.path;
        conf["mm_projector_type"] = cfg.projector.type;
        conf["mm_hidden_size"] = sm.llava->vision_tower()->hidden_size();
        conf["mm_vision_select_layer"] = cfg.vision.select_layer;
        conf["mm_vision_select_feature"] = cfg.vision.select_feature;
    }
    const std::string tok_dir = data::tokenizer_path(cfg);
    return export_hf_dir((fs::path(cfg.train.output_dir) / "hf").string(), io::module_state(*sm.llava), conf, tok_dir);
}

torch::Device pick_device(const core::Config & cfg, int local_rank) {
    const bool cuda = torch::cuda::is_available();
    if (cfg.model.device == "cuda" && !cuda) throw core::ConfigError("model.device is cuda but no CUDA device is visible");
    if (cfg.model.device == "cuda" || (cfg.model.device == "auto" && cuda))
        return torch::Device(torch::kCUDA, static_cast<c10::DeviceIndex>(local_rank));
    return torch::Device(torch::kCPU);
}

}  // namespace

StageRun run_stage(const core::Config & cfg, const std::string & resume, std::unique_ptr<BatchSource> source) {
    const dist::LaunchEnv env = dist::read_launch_env();
    // Only rank 0 logs below warn unless logging.all_ranks asks for every rank.
    core::init_logging(cfg.logging.level, env.rank, cfg.logging.all_ranks);
    spdlog::info("resolved config ({}):\n{}", cfg.source_file, core::config_to_yaml(cfg));
    std::unique_ptr<dist::Comm> comm;
    if (env.distributed()) {
        comm = std::make_unique<dist::Comm>(cfg.dist, env);
        dist::check_same_config(*comm, dist::config_hash(core::config_to_yaml(cfg)));
    }
    const torch::Device device = pick_device(cfg, env.local_rank);
    const bool autocast_bf16 = core::check_compute_dtype(cfg.model.dtype, device);
    torch::manual_seed(static_cast<uint64_t>(cfg.train.seed));

    StageModel sm = build_stage_model(cfg);
    const TrainableSummary summary = apply_stage_rules(*sm.llava, cfg.train.stage, cfg.train.trainable);
    spdlog::info("stage {}: {}", cfg.train.stage, summary.to_string());
    if (cfg.model.activation_checkpointing) sm.llava->llm()->set_checkpointing(true);
    sm.llava->to(device);
    sm.llava->train(true);

    if (!source && cfg.data.curriculum.empty())
        source = std::make_unique<LoaderSource>(cfg, cfg.data.train, data::load_tokenizer(data::tokenizer_path(cfg)), env.rank,
                                                env.world_size, cfg.data.batch_size);
    if (!source) source = std::make_unique<CurriculumSource>(cfg, env.rank, env.world_size);
    // train.epochs counts passes over data.train, after the curriculum.
    const int64_t total = cfg.train.max_steps > 0 ? cfg.train.max_steps
                                                  : core::curriculum_steps(cfg.data) + total_optimizer_steps(source->num_samples(), cfg.data.batch_size, env.world_size,
                                                                                              cfg.data.grad_accum, cfg.train.epochs, 0);
    LlavaTask task(sm, *source, device, autocast_bf16);
    const FlopModel flops = make_flop_model(sm, cfg);

    LoopOptions opt;
    opt.resume = resume;
    opt.total_steps = total;
    opt.flops = &flops;
    opt.device_name = device_name(device.is_cuda(), device.is_cuda() ? device.index() : 0);
    std::unique_ptr<dist::GradReducer> reducer;
    if (comm) {
        std::vector<torch::Tensor> params;
        for (auto & p : sm.llava->parameters()) params.push_back(p);
        reducer = std::make_unique<dist::GradReducer>(params, *comm, static_cast<size_t>(cfg.dist.bucket_mb) << 20, cfg.dist.overlap);
        opt.dist.rank = comm->rank();
        opt.dist.world_size = comm->world_size();
        opt.dist.prepare = [&](bool sync) { reducer->prepare(sync); };
        opt.dist.finalize = [&]() { reducer->finalize(); };
        opt.dist.sum = [&](const std::vector<double> & v) { return dist::all_reduce_sum(*comm, v); };
        opt.dist.sum_tensor = [&](const torch::Tensor & t) { return dist::all_reduce_sum(*comm, t); };
        opt.dist.barrier = [&]() { comm->barrier("checkpoint"); };
        opt.dist.gather = [&](const std::string & mine) { return comm->all_gather_bytes(mine, "checkpoint rank state"); };
    }
    for (size_t i = 0; i < cfg.data.curriculum.size(); ++i) {
        const core::CurriculumPhase & p = cfg.data.curriculum[i];
        const std::string lr = p.lr > 0 ? fmt::format("own warm-up and cosine to lr {:g}", p.lr) : "on the run's lr schedule";
        spdlog::info("data: curriculum phase {}: {} steps, batch {} per rank, {} file(s), {}", i, p.steps,
                     core::phase_batch_size(cfg.data, p), p.train.size(), lr);
    }
    spdlog::info("stage {}: {} optimizer steps (data.train: batch {} x grad_accum {} x world {}), device {}", cfg.train.stage, total,
                 cfg.data.batch_size, cfg.data.grad_accum, env.world_size, opt.device_name);

    StageRun run;
    RunResult res = run_training(task, cfg, opt);
    if (reducer && reducer->stats().steps_with_no_local_grad > 0)
        spdlog::info("dist: rank {}: {} of {} steps had trainable tensors without a gradient on this rank (e.g. experts "
                     "that got no tokens here); they entered the all-reduce as zeros", comm->rank(),
                     reducer->stats().steps_with_no_local_grad, reducer->stats().steps);
    run.end_step = res.end_step;
    run.total_steps = total;
    run.stop_reason = res.stop_reason;
    run.losses = res.losses;
    run.skipped_samples = res.skipped_samples;
    if (res.skipped_samples > 0) {
        const std::string kinds = source->bad_sample_summary();
        spdlog::warn("{} bad samples were skipped (kept with fully masked labels) since step 0 of this stage{}{}",
                     res.skipped_samples, kinds.empty() ? "" : "; this rank's loader (counting batches prefetched past the last step) saw ", kinds);
    }
    if (res.stop_reason == "done" && env.rank == 0) {
        run.export_dir = export_stage(sm, cfg);
        spdlog::info("stage {} finished: exported {}", cfg.train.stage, run.export_dir);
    }
    if (comm) comm->barrier("end of stage");
    return run;
}

}  // namespace idamoe::train
