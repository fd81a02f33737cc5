// defines: RoutingStats, routing_stats, StepRecord, MetricsLogger, ProgressBar
//
// What a training step reports (every train.log_every steps): one console line and one JSONL record.
// CV follows the IDA-MoE fork (moe_llava_protocol.md §7): std(counts, unbiased)/(mean(counts)+1e-8) per
// MoE layer, averaged over layers (CV_mean); routing entropy is the mean gate entropy.
#pragma once

#include <torch/torch.h>

#include <nlohmann/json.hpp>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <map>
#include <string>
#include <vector>

namespace idamoe::train {

struct RoutingStats {
    double cv_mean = 0.0;                          // mean over MoE layers of the CV of expert counts
    double entropy_mean = 0.0;                     // mean over MoE layers of the mean routing entropy
    std::map<int64_t, std::vector<double>> load;   // layer -> fraction of assignments per expert
    bool any = false;
};

// counts: layer -> counts_E (float tensor); entropy: layer -> scalar tensor (may be missing).
RoutingStats routing_stats(const std::map<int64_t, torch::Tensor> & counts,
                           const std::map<int64_t, torch::Tensor> & entropy);
double coefficient_of_variation(const std::vector<double> & counts);

struct StepRecord {
    int64_t step = 0, total_steps = 0;
    double epoch = 0.0;
    double loss = 0.0;                             // CE + weighted aux losses
    std::map<std::string, double> parts;           // "ce", "ae", "gmm", "react", "aux", "z"
    double lr = 0.0, grad_norm = 0.0;
    double tokens_per_s = 0.0, step_ms = 0.0;
    double flops_per_step = 0.0;
    double peak_flops = 0.0;                       // 0 = unknown device (CPU): report GFLOP/s instead of MFU
    int64_t n_devices = 1;
    int64_t skipped_nonfinite = 0;
    int64_t skipped_samples = 0;                   // bad samples (undecodable image, ...) trained with masked labels, all ranks, whole run
    RoutingStats routing;

    double achieved_flops_per_s() const { return step_ms > 0 ? flops_per_step / (step_ms / 1e3) : 0.0; }
    double mfu() const;                            // NaN-free: 0 when the peak is unknown
    nlohmann::json to_json() const;
    std::string console_line() const;
};

// Appends JSONL records to a file (created with its parent folder) and logs console lines through spdlog.
class MetricsLogger {
public:
    MetricsLogger() = default;
    explicit MetricsLogger(const std::string & jsonl_path);  // "" = no file
    ~MetricsLogger();
    MetricsLogger(const MetricsLogger &) = delete;
    MetricsLogger & operator=(const MetricsLogger &) = delete;

    void log(const StepRecord & r, bool console = true);
    void event(const std::string & kind, const nlohmann::json & fields);  // {"event": kind, ...}

private:
    std::FILE * file_ = nullptr;
    std::string path_;
};

// A one-line bar with ETA on an interactive terminal (stderr is a tty); otherwise silent (the log lines
// carry the progress). ETA uses the mean step time since construction.
class ProgressBar {
public:
    ProgressBar(int64_t first_step, int64_t total_steps, bool enabled);
    void update(int64_t step, double loss);
    void finish();
    bool active() const { return enabled_; }
    static std::string format_eta(double seconds);

private:
    int64_t first_, total_;
    bool enabled_;
    std::chrono::steady_clock::time_point t0_;
};

}  // namespace idamoe::train
