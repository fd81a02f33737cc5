// defines: routing_stats, StepRecord, MetricsLogger, ProgressBar
#include "train/metrics.h"

#include <spdlog/spdlog.h>

#include <cmath>
#include <filesystem>
#include <stdexcept>
#include <unistd.h>

namespace idamoe::train {

double coefficient_of_variation(const std::vector<double> & counts) {
    const size_t n = counts.size();
    if (n < 2) return 0.0;
    double mean = 0;
    for (double c : counts) mean += c;
    mean /= static_cast<double>(n);
    double var = 0;
    for (double c : counts) var += (c - mean) * (c - mean);
    var /= static_cast<double>(n - 1);  // torch.std default (unbiased), as in compute_cv
    return std::sqrt(var) / (mean + 1e-8);
}

RoutingStats routing_stats(const std::map<int64_t, torch::Tensor> & counts, const std::map<int64_t, torch::Tensor> & entropy) {
    RoutingStats r;
    double cv_sum = 0, ent_sum = 0;
    int64_t n_ent = 0;
    for (const auto & [layer, c] : counts) {
        if (!c.defined()) continue;
        torch::Tensor cd = c.detach().to(torch::kCPU, torch::kFloat64).contiguous();
        std::vector<double> v(cd.data_ptr<double>(), cd.data_ptr<double>() + cd.numel());
        cv_sum += coefficient_of_variation(v);
        double total = 0;
        for (double x : v) total += x;
        for (double & x : v) x = total > 0 ? x / total : 0.0;
        r.load[layer] = std::move(v);
        r.any = true;
    }
    for (const auto & [layer, e] : entropy) {
        if (!e.defined()) continue;
        ent_sum += e.detach().to(torch::kCPU, torch::kFloat64).item<double>();
        ++n_ent;
    }
    if (!r.load.empty()) r.cv_mean = cv_sum / static_cast<double>(r.load.size());
    if (n_ent > 0) r.entropy_mean = ent_sum / static_cast<double>(n_ent);
    return r;
}

double StepRecord::mfu() const {
    if (peak_flops <= 0 || n_devices <= 0) return 0.0;
    return achieved_flops_per_s() / (peak_flops * static_cast<double>(n_devices));
}

nlohmann::json StepRecord::to_json() const {
    nlohmann::json j;
    j["step"] = step;
    j["total_steps"] = total_steps;
    j["epoch"] = epoch;
    j["loss"] = loss;
    for (const auto & [k, v] : parts) j["loss_" + k] = v;
    j["lr"] = lr;
    j["grad_norm"] = grad_norm;
    j["tokens_per_s"] = tokens_per_s;
    j["step_ms"] = step_ms;
    j["flops_per_step"] = flops_per_step;
    j["achieved_gflops"] = achieved_flops_per_s() / 1e9;
    if (peak_flops > 0) j["mfu"] = mfu();
    j["skipped_nonfinite"] = skipped_nonfinite;
    j["skipped_samples"] = skipped_samples;
    if (routing.any) {
        j["cv_mean"] = routing.cv_mean;
        j["routing_entropy"] = routing.entropy_mean;
        nlohmann::json load = nlohmann::json::object();
        for (const auto & [layer, v] : routing.load) load[std::to_string(layer)] = v;
        j["expert_load"] = load;
    }
    return j;
}

std::string StepRecord::console_line() const {
    char buf[512];
    int n = std::snprintf(buf, sizeof buf, "step %lld/%lld | ep %.3f | loss %.4f", static_cast<long long>(step),
                          static_cast<long long>(total_steps), epoch, loss);
    std::string s(buf, static_cast<size_t>(n));
    for (const auto & [k, v] : parts) {
        n = std::snprintf(buf, sizeof buf, " %s %.4g", k.c_str(), v);
        s.append(buf, static_cast<size_t>(n));
    }
    n = std::snprintf(buf, sizeof buf, " | lr %.3e | gnorm %.3f | %.0f tok/s | %.0f ms", lr, grad_norm, tokens_per_s, step_ms);
    s.append(buf, static_cast<size_t>(n));
    if (peak_flops > 0) n = std::snprintf(buf, sizeof buf, " | MFU %.1f%%", 100.0 * mfu());
    else n = std::snprintf(buf, sizeof buf, " | %.2f GFLOP/s", achieved_flops_per_s() / 1e9);
    s.append(buf, static_cast<size_t>(n));
    if (routing.any) {
        n = std::snprintf(buf, sizeof buf, " | CV %.3f | H %.3f", routing.cv_mean, routing.entropy_mean);
        s.append(buf, static_cast<size_t>(n));
    }
    if (skipped_nonfinite > 0) s += " | skipped " + std::to_string(skipped_nonfinite);
    if (skipped_samples > 0) s += " | bad samples " + std::to_string(skipped_samples);
    return s;
}

MetricsLogger::MetricsLogger(const std::string & jsonl_path) : path_(jsonl_path) {
    if (jsonl_path.empty()) return;
    const auto parent = std::filesystem::path(jsonl_path).parent_path();
    if (!parent.empty()) std::filesystem::create_directories(parent);
    file_ = std::fopen(jsonl_path.c_str(), "a");
    if (!file_) throw std::runtime_error("metrics: cannot open " + jsonl_path + " for appending");
}

MetricsLogger::~MetricsLogger() {
    if (file_) std::fclose(file_);
}

void MetricsLogger::log(const StepRecord & r, bool console) {
    if (console) spdlog::info("{}", r.console_line());
    if (file_) {
        const std::string line = r.to_json().dump() + "\n";
        if (std::fwrite(line.data(), 1, line.size(), file_) != line.size() || std::fflush(file_) != 0)
            spdlog::warn("metrics: writing {} failed (disk full?); continuing without this record", path_);
    }
}

void MetricsLogger::event(const std::string & kind, const nlohmann::json & fields) {
    if (!file_) return;
    nlohmann::json j = fields;
    j["event"] = kind;
    const std::string line = j.dump() + "\n";
    if (std::fwrite(line.data(), 1, line.size(), file_) != line.size() || std::fflush(file_) != 0)
        spdlog::warn("metrics: writing {} failed", path_);
}

ProgressBar::ProgressBar(int64_t first_step, int64_t total_steps, bool enabled)
    : first_(first_step), total_(total_steps), enabled_(enabled && isatty(STDERR_FILENO)), t0_(std::chrono::steady_clock::now()) {}

std::string ProgressBar::format_eta(double seconds) {
    if (!std::isfinite(seconds) || seconds < 0) return "--:--";
    const long long s = static_cast<long long>(seconds + 0.5);
    char buf[32];
    if (s >= 3600) std::snprintf(buf, sizeof buf, "%lld:%02lld:%02lld", s / 3600, (s / 60) % 60, s % 60);
    else std::snprintf(buf, sizeof buf, "%02lld:%02lld", s / 60, s % 60);
    return buf;
}

void ProgressBar::update(int64_t step, double loss) {
    if (!enabled_) return;
    const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0_).count();
    const int64_t done = step - first_;
    const double eta = done > 0 ? elapsed / static_cast<double>(done) * static_cast<double>(total_ - step) : -1.0;
    const int width = 30;
    const int filled = total_ > 0 ? static_cast<int>(width * static_cast<double>(step) / static_cast<double>(total_)) : 0;
    std::string bar(static_cast<size_t>(std::min(filled, width)), '#');
    bar.resize(width, '.');
    std::fprintf(stderr, "\r[%s] %lld/%lld loss %.4f ETA %s ", bar.c_str(), static_cast<long long>(step),
                 static_cast<long long>(total_), loss, format_eta(eta).c_str());
    std::fflush(stderr);
}

void ProgressBar::finish() {
    if (enabled_) std::fprintf(stderr, "\n");
}

}  // namespace idamoe::train
