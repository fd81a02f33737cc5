// defines: run_training, config_differences, TrainTask default weight I/O
#include "train/loop.h"

#include "train/guard.h"
#include "train/loss.h"
#include "train/optimizer.h"
#include "train/schedule.h"
#include "train/stages.h"

#include <spdlog/spdlog.h>
#include <yaml-cpp/yaml.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <set>

namespace idamoe::train {

namespace {
using Clock = std::chrono::steady_clock;
double ms_since(Clock::time_point t0) { return std::chrono::duration<double, std::milli>(Clock::now() - t0).count(); }

void flatten(const YAML::Node & n, const std::string & path, std::map<std::string, std::string> & out) {
    if (n.IsMap()) {
        for (auto it = n.begin(); it != n.end(); ++it)
            flatten(it->second, path.empty() ? it->first.as<std::string>() : path + "." + it->first.as<std::string>(), out);
    } else if (n.IsSequence()) {
        YAML::Emitter e;
        e << YAML::Flow << n;
        out[path] = e.c_str();
    } else if (n.IsScalar()) {
        out[path] = n.as<std::string>();
    } else {
        out[path] = "";
    }
}

std::string to_hex(const torch::Tensor & bytes_u8) {
    static const char * kDigits = "0123456789abcdef";
    const torch::Tensor c = bytes_u8.contiguous();
    const auto * p = c.data_ptr<uint8_t>();
    std::string out(static_cast<size_t>(c.numel()) * 2, '0');
    for (int64_t i = 0; i < c.numel(); ++i) {
        out[2 * i] = kDigits[p[i] >> 4];
        out[2 * i + 1] = kDigits[p[i] & 15];
    }
    return out;
}

torch::Tensor from_hex(const std::string & hex) {
    auto nib = [](char ch) { return static_cast<uint8_t>(ch <= '9' ? ch - '0' : ch - 'a' + 10); };
    torch::Tensor t = torch::empty({static_cast<int64_t>(hex.size() / 2)}, torch::kUInt8);
    auto * p = t.data_ptr<uint8_t>();
    for (size_t i = 0; i < hex.size() / 2; ++i) p[i] = static_cast<uint8_t>(nib(hex[2 * i]) << 4 | nib(hex[2 * i + 1]));
    return t;
}

// One rank's resumable state as text, for DistHooks::gather (the rendezvous store carries strings).
std::string rank_state_blob(const nlohmann::json & sampler, const io::TensorMap & rng) {
    nlohmann::json j = {{"sampler", sampler}, {"rng", nlohmann::json::object()}};
    for (const auto & [k, t] : rng) j["rng"][k] = to_hex(t);
    return j.dump();
}

// Restores this rank's own sampler position and RNG state. A checkpoint from another number of ranks is
// refused: positions count micro-batches dealt round-robin over that many ranks, so they cannot be mapped
// onto another number of ranks without changing the global batch and the schedule.
void restore_rank_state(const io::CheckpointData & ck, const std::string & dir, const DistHooks & dist, TrainTask & task) {
    const nlohmann::json & ts = ck.trainer_state;
    int64_t saved_world = ts.value("world_size", int64_t{-1});
    if (saved_world < 0 && ts.contains("sampler") && ts["sampler"].is_object())  // before world_size was recorded
        saved_world = ts["sampler"].value("world_size", int64_t{-1});
    if (saved_world > 0 && saved_world != dist.world_size)
        throw core::ConfigError(
            "cannot resume from " + dir + " with " + std::to_string(dist.world_size) + " rank(s): it was written by a run with " +
            std::to_string(saved_world) + ". The position in the data cannot be remapped: each rank's sampler offset counts "
            "micro-batches dealt round-robin over " + std::to_string(saved_world) + " ranks (and group_by_modality builds its "
            "megabatches for that many), each rank's RNG state belongs to one of those ranks, and the global batch "
            "(batch_size x grad_accum x ranks), hence the schedule, would change. Resume with " + std::to_string(saved_world) +
            " rank(s), or start a new train.output_dir");
    if (ts.contains("samplers")) {
        const auto & all = ts["samplers"];
        if (!all.is_array() || static_cast<int64_t>(all.size()) != dist.world_size)
            throw io::CheckpointError("checkpoint " + dir + ": trainer_state.json has " + std::to_string(all.size()) +
                                      " sampler states for " + std::to_string(dist.world_size) + " ranks");
        io::restore_rng_state(io::rng_state_of_rank(ck.rng, dist.rank));
        task.restore_data_state(all[static_cast<size_t>(dist.rank)]);
        return;
    }
    // A one-process checkpoint, or a data-parallel one from before per-rank state: rank 0's state for all.
    // The loader gives every rank the same number of micro-batches, so rank 0's offset is every rank's.
    if (dist.world_size > 1)
        spdlog::warn("resume: {} holds only rank 0's sampler and RNG state (written before per-rank state); "
                     "every rank continues from rank 0's", dir);
    io::restore_rng_state(ck.rng);
    if (ts.contains("sampler")) {
        nlohmann::json sampler = ts["sampler"];
        if (sampler.is_object() && sampler.contains("rank")) sampler["rank"] = dist.rank;
        task.restore_data_state(sampler);
    }
}
}  // namespace

std::vector<std::string> config_differences(const std::string & stored_yaml, const std::string & current_yaml) {
    // May differ across a resume: run control, logging, data-loading parallelism, retention.
    static const std::set<std::string> kFree = {
        "train.stop_after", "train.max_nonfinite_in_row", "train.log_every", "train.save_every",
        "data.num_workers", "data.prefetch", "checkpoint.keep_last", "dist.timeout_s", "dist.bucket_mb",
        "dist.overlap", "dist.backend", "model.device", "model.activation_checkpointing"};
    std::map<std::string, std::string> a, b;
    flatten(YAML::Load(stored_yaml), "", a);
    flatten(YAML::Load(current_yaml), "", b);
    std::vector<std::string> diffs;
    std::set<std::string> keys;
    for (auto & kv : a) keys.insert(kv.first);
    for (auto & kv : b) keys.insert(kv.first);
    for (const auto & k : keys) {
        if (kFree.count(k) || k.rfind("logging.", 0) == 0 || k == "source_file") continue;
        auto ia = a.find(k), ib = b.find(k);
        const std::string va = ia == a.end() ? "(absent)" : ia->second, vb = ib == b.end() ? "(absent)" : ib->second;
        if (va != vb) diffs.push_back(k + ": checkpoint " + va + ", now " + vb);
    }
    return diffs;
}

io::TensorMap TrainTask::checkpoint_weights() {
    io::TensorMap out;
    for (auto & [name, p] : named_parameters())
        if (p.requires_grad()) out[name] = p.detach();
    return out;
}

void TrainTask::load_checkpoint_weights(const io::TensorMap & weights) {
    torch::NoGradGuard no_grad;
    std::map<std::string, torch::Tensor> params;
    for (auto & [name, p] : named_parameters()) params[name] = p;
    for (const auto & [name, t] : weights) {
        auto it = params.find(name);
        if (it == params.end()) throw io::CheckpointError("checkpoint weight '" + name + "' does not exist in this model");
        if (it->second.sizes() != t.sizes())
            throw io::CheckpointError("checkpoint weight '" + name + "' has shape " + c10::str(t.sizes()) +
                                      ", the model has " + c10::str(it->second.sizes()));
        it->second.copy_(t);
    }
    for (auto & [name, p] : params)
        if (p.requires_grad() && !weights.count(name))
            throw io::CheckpointError("checkpoint has no weight for trainable parameter '" + name + "'");
}

RunResult run_training(TrainTask & task, const core::Config & cfg, const LoopOptions & opt) {
    const auto & tc = cfg.train;
    const DistHooks & dist = opt.dist;
    const int64_t ga = std::max<int64_t>(1, cfg.data.grad_accum);
    auto named = task.named_parameters();
    std::vector<torch::Tensor> trainable;
    for (auto & [n, p] : named)
        if (p.requires_grad()) trainable.push_back(p);
    AdamW optimizer(named, AdamWOptions{tc.lr, tc.adam_beta1, tc.adam_beta2, tc.adam_eps, tc.weight_decay},
                    [&](const std::string & name) {
                        const bool gmm = classify_param(name) == ParamKind::router &&
                                         name.find(".router.gmm.") != std::string::npos;
                        return gmm ? tc.gmm_lr_scale : 1.0;
                    });
    std::vector<std::pair<int64_t, double>> phase_lrs;
    for (const auto & p : cfg.data.curriculum) phase_lrs.emplace_back(p.steps, p.lr);
    const RunSchedule schedule = RunSchedule::cosine(tc.lr, opt.total_steps, tc.warmup_ratio, tc.min_lr_ratio, phase_lrs);
    NonFiniteGuard guard(tc.max_nonfinite_in_row);
    const std::string config_yaml = core::config_to_yaml(cfg);

    RunResult res;
    int64_t step = 0;
    if (!opt.resume.empty()) {
        const std::string dir = io::resolve_resume(tc.output_dir, opt.resume);
        if (dir.empty()) {
            spdlog::info("resume auto: no checkpoint in {}; starting from step 0", tc.output_dir);
        } else {
            io::CheckpointData ck = io::load_checkpoint(dir);
            const auto diffs = config_differences(ck.config_yaml, config_yaml);
            if (!diffs.empty()) {
                std::string msg = "cannot resume from " + dir + ": the config differs from the one it was trained with:";
                for (const auto & d : diffs) msg += "\n  " + d;
                msg += "\n(start a new train.output_dir, or restore these values)";
                throw core::ConfigError(msg);
            }
            task.load_checkpoint_weights(ck.model);
            if (!ck.optimizer.empty()) optimizer.load_state_dict(ck.optimizer);
            else spdlog::warn("resume: {} has no optimizer state (checkpoint.save_optimizer was off); AdamW restarts", dir);
            restore_rank_state(ck, dir, dist, task);
            const auto & nf = ck.trainer_state.value("nonfinite", nlohmann::json::object());
            guard.restore(nf.value("in_row", int64_t{0}), nf.value("total", int64_t{0}));
            res.skipped_samples = ck.trainer_state.value("skipped_samples", int64_t{0});
            step = ck.step;
            res.last_checkpoint = dir;
            spdlog::info("resumed from {} at step {}/{}", dir, step, opt.total_steps);
        }
    }
    res.start_step = step;

    auto save = [&](bool final_save) {
        if (!opt.checkpoints) return;
        // Every rank's sampler position and RNG state travel to rank 0, which alone writes the checkpoint
        // (one writer keeps the temp-folder/fsync/rename protocol and the manifest exactly as for one process).
        std::vector<std::string> rank_states;
        if (dist.world_size > 1 && dist.gather) rank_states = dist.gather(rank_state_blob(task.data_state(), io::capture_rng_state()));
        std::string path;
        if (dist.is_main()) {
            io::CheckpointData ck;
            ck.step = step;
            ck.model = task.checkpoint_weights();
            if (cfg.checkpoint.save_optimizer) ck.optimizer = optimizer.state_dict();
            ck.trainer_state = task.checkpoint_info();
            ck.trainer_state["stage"] = tc.stage;
            ck.trainer_state["epoch"] = task.epoch();
            ck.trainer_state["sampler"] = task.data_state();  // rank 0's; "samplers" holds every rank's
            ck.trainer_state["world_size"] = dist.world_size;
            if (rank_states.empty()) {
                ck.rng = io::capture_rng_state();
            } else {
                nlohmann::json samplers = nlohmann::json::array();
                for (size_t r = 0; r < rank_states.size(); ++r) {
                    const nlohmann::json j = nlohmann::json::parse(rank_states[r]);
                    samplers.push_back(j.at("sampler"));
                    for (const auto & [k, hex] : j.at("rng").items())
                        ck.rng["rank" + std::to_string(r) + "/" + k] = from_hex(hex.get<std::string>());
                }
                ck.trainer_state["samplers"] = samplers;
            }
            ck.trainer_state["nonfinite"] = {{"in_row", guard.in_row()}, {"total", guard.total_skipped()}};
            ck.trainer_state["skipped_samples"] = res.skipped_samples;
            const LrSchedule & m = schedule.main;
            ck.trainer_state["schedule"] = {{"total_steps", m.total_steps}, {"warmup_steps", m.warmup_steps},
                                            {"peak_lr", m.peak_lr}, {"min_lr_ratio", m.min_lr_ratio}};
            for (const auto & p : schedule.phases)
                ck.trainer_state["schedule"]["phases"].push_back({{"begin", p.begin}, {"end", p.end}, {"peak_lr", p.schedule.peak_lr},
                                                                  {"warmup_steps", p.schedule.warmup_steps}});
            ck.config_yaml = config_yaml;
            try {
                path = io::save_checkpoint(tc.output_dir, ck, cfg.checkpoint.keep_last);
                res.last_checkpoint = path;
                spdlog::info("saved checkpoint {}", path);
            } catch (const io::CheckpointError & e) {
                if (final_save) throw;
                spdlog::error("{} Training continues; the next save (train.save_every) tries again.", e.what());
            }
        }
        if (dist.barrier) dist.barrier();
    };

    MetricsLogger metrics(dist.is_main() && !cfg.logging.jsonl.empty()
                              ? (std::filesystem::path(tc.output_dir) / cfg.logging.jsonl).string() : "");
    ProgressBar bar(step, opt.total_steps, cfg.logging.progress_bar && dist.is_main());
    const double peak = peak_flops_for_device(opt.device_name);
    const int64_t run_limit = tc.stop_after > 0 ? tc.stop_after : -1;
    res.stop_reason = "done";
    bool saved_at_step = false;
    int64_t bad_since_log = 0;  // this rank's bad samples not yet summed over ranks

    while (step < opt.total_steps) {
        if (stop_requested()) {
            res.stop_reason = "signal";
            spdlog::warn("stop requested (signal {}); saving a checkpoint at step {}", stop_signal(), step);
            break;
        }
        if (run_limit > 0 && step - res.start_step >= run_limit) {
            res.stop_reason = "stop_after";
            break;
        }
        const auto t_step = Clock::now();
        // 1. Data: all micro-batches first, so the losses can be normalised by the step's total target
        //    tokens and real rows over all ranks (train/loss.h); one collective for both counts.
        auto t0 = Clock::now();
        int64_t local_targets = 0, local_rows = 0;
        std::vector<int64_t> rows(static_cast<size_t>(ga));
        bool rows_known = true;
        for (int64_t i = 0; i < ga; ++i) {
            local_targets += task.load_micro_batch(i);
            rows[static_cast<size_t>(i)] = task.aux_rows(i);
            rows_known = rows_known && rows[static_cast<size_t>(i)] >= 0;
            local_rows += std::max<int64_t>(0, rows[static_cast<size_t>(i)]);
        }
        std::vector<double> counts_global{static_cast<double>(local_targets), static_cast<double>(local_rows)};
        if (dist.sum) counts_global = dist.sum(counts_global);
        const double total_targets = counts_global[0], total_rows = counts_global[1];
        const double data_ms = ms_since(t0);
        // 2. Forward/backward per micro-batch.
        double ce_sum = 0, aux_sum = 0, fwd_ms = 0, bwd_ms = 0, flops = 0;
        int64_t tokens = 0;
        std::map<std::string, double> parts;
        std::map<int64_t, torch::Tensor> counts, entropy;
        for (int64_t i = 0; i < ga; ++i) {
            t0 = Clock::now();
            MicroBatchResult r = task.forward(i);
            // Every rank must use the same rule, so one rank with unknown rows would be a bug in the task.
            const double aux_w = aux_weight(rows_known ? rows[static_cast<size_t>(i)] : -1, total_rows, ga, dist.world_size);
            torch::Tensor obj = weighted_micro_batch_objective(r.ce_sum, static_cast<int64_t>(total_targets), r.aux_loss,
                                                               aux_w, dist.world_size);
            fwd_ms += ms_since(t0);
            t0 = Clock::now();
            if (dist.prepare) dist.prepare(i == ga - 1);
            obj.backward();
            bwd_ms += ms_since(t0);
            ce_sum += r.ce_sum.detach().item<double>();
            // aux_sum: this rank's share of the step's aux loss, so the sum over ranks is the step's value.
            if (r.aux_loss.defined()) aux_sum += r.aux_loss.detach().item<double>() * aux_w / static_cast<double>(dist.world_size);
            // Logged parts stay this rank's own row-weighted means (rank 0 logs them).
            const double part_w = rows_known ? (local_rows > 0 ? static_cast<double>(rows[static_cast<size_t>(i)]) / static_cast<double>(local_rows) : 0.0)
                                             : 1.0 / static_cast<double>(ga);
            for (auto & [k, v] : r.parts) parts[k] += v * part_w;
            for (auto & [l, c] : r.counts_E) counts[l] = counts.count(l) ? counts[l] + c.detach() : c.detach();
            for (auto & [l, e] : r.entropy) entropy[l] = entropy.count(l) ? entropy[l] + e.detach() / double(ga) : e.detach() / double(ga);
            tokens += r.n_tokens;
            bad_since_log += r.bad_samples;
            if (opt.flops) flops += opt.flops->step_flops(r.shape);
        }
        t0 = Clock::now();
        if (dist.finalize) dist.finalize();
        std::vector<double> sums{ce_sum, aux_sum};
        if (dist.sum) sums = dist.sum(sums);
        const double ce_global = sums[0], aux_global = sums[1];
        const double loss = ce_global / std::max(1.0, total_targets) + aux_global;
        const double gnorm = clip_grad_norm(trainable, tc.grad_clip);
        const double lr = schedule.at(step);
        const auto verdict = guard.observe(loss, gnorm);
        if (verdict == NonFiniteGuard::Verdict::ok) {
            optimizer.step(lr);
        } else {
            spdlog::warn("step {}: non-finite {} (loss {}, grad norm {}); update skipped ({} in a row, {} total)", step,
                         std::isfinite(loss) ? "gradient" : "loss", loss, gnorm, guard.in_row(), guard.total_skipped());
        }
        optimizer.zero_grad();
        const double opt_ms = ms_since(t0);
        if (verdict == NonFiniteGuard::Verdict::stop) {
            bar.finish();
            const std::string msg = guard.stop_message(step) +
                                    (res.last_checkpoint.empty() ? " (no checkpoint was written yet)" : " (" + res.last_checkpoint + ")");
            metrics.event("stopped_nonfinite", {{"step", step}, {"message", msg}});
            throw TrainingStopped(msg);
        }
        ++step;
        saved_at_step = false;
        const double step_ms = ms_since(t_step);
        res.losses.push_back(loss);
        res.data_ms.push_back(data_ms);
        res.forward_ms.push_back(fwd_ms);
        res.backward_ms.push_back(bwd_ms);
        res.optimizer_ms.push_back(opt_ms);
        res.step_ms.push_back(step_ms);
        res.tokens.push_back(tokens);
        res.step_flops.push_back(flops);

        const bool log_now = step % std::max<int64_t>(1, tc.log_every) == 0 || step == opt.total_steps;
        if (log_now && dist.sum_tensor)  // collective: every rank, before rank 0 computes CV from global counts
            for (auto & kv : counts) kv.second = dist.sum_tensor(kv.second);
        // Summed at every log and before every save (both on all ranks at the same steps), so the total in
        // the JSONL and in the checkpoint is global and exact.
        const bool save_now = tc.save_every > 0 && step % tc.save_every == 0 && step < opt.total_steps;
        if (log_now || save_now) {
            res.skipped_samples += static_cast<int64_t>(
                dist.sum ? dist.sum({static_cast<double>(bad_since_log)})[0] : static_cast<double>(bad_since_log));
            bad_since_log = 0;
        }
        if (dist.is_main() && log_now) {
            StepRecord rec;
            rec.step = step;
            rec.total_steps = opt.total_steps;
            rec.epoch = task.epoch();
            rec.loss = loss;
            rec.parts = parts;
            rec.parts["ce"] = ce_global / std::max(1.0, total_targets);
            rec.lr = lr;
            rec.grad_norm = gnorm;
            rec.step_ms = step_ms;
            rec.tokens_per_s = step_ms > 0 ? static_cast<double>(tokens) * dist.world_size / (step_ms / 1e3) : 0.0;
            rec.flops_per_step = flops * dist.world_size;
            rec.peak_flops = peak;
            rec.n_devices = dist.world_size;
            rec.skipped_nonfinite = guard.total_skipped();
            rec.skipped_samples = res.skipped_samples;
            rec.routing = routing_stats(counts, entropy);
            metrics.log(rec, !bar.active());
        }
        bar.update(step, loss);
        if (save_now) {
            save(false);
            saved_at_step = true;
        }
    }
    bar.finish();
    res.end_step = step;
    if (bad_since_log != 0 || dist.sum) {  // collective when distributed: every rank reaches this point
        res.skipped_samples += static_cast<int64_t>(
            dist.sum ? dist.sum({static_cast<double>(bad_since_log)})[0] : static_cast<double>(bad_since_log));
        bad_since_log = 0;
    }
    if (!saved_at_step) save(true);
    if (res.stop_reason != "done")
        spdlog::info("stopped at step {}/{} ({}); continue with --resume auto", step, opt.total_steps, res.stop_reason);
    return res;
}

}  // namespace idamoe::train
