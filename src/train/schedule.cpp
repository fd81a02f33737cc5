// defines: LrSchedule, RunSchedule, steps_per_epoch, total_optimizer_steps
#include "train/schedule.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>

namespace idamoe::train {

LrSchedule LrSchedule::cosine(double peak_lr, int64_t total_steps, double warmup_ratio, double min_lr_ratio) {
    if (total_steps < 1) throw std::invalid_argument("lr schedule: total_steps must be >= 1, got " + std::to_string(total_steps));
    LrSchedule s;
    s.peak_lr = peak_lr;
    s.total_steps = total_steps;
    s.warmup_steps = static_cast<int64_t>(std::ceil(warmup_ratio * static_cast<double>(total_steps)));
    s.min_lr_ratio = min_lr_ratio;
    return s;
}

double LrSchedule::at(int64_t step) const {
    if (step < warmup_steps) return peak_lr * static_cast<double>(step) / static_cast<double>(std::max<int64_t>(1, warmup_steps));
    const double progress = static_cast<double>(step - warmup_steps) /
                            static_cast<double>(std::max<int64_t>(1, total_steps - warmup_steps));
    const double cosine = std::max(0.0, 0.5 * (1.0 + std::cos(M_PI * std::min(1.0, progress))));
    return peak_lr * (min_lr_ratio + (1.0 - min_lr_ratio) * cosine);
}

RunSchedule RunSchedule::cosine(double peak_lr, int64_t total_steps, double warmup_ratio, double min_lr_ratio,
                                const std::vector<std::pair<int64_t, double>> & phases) {
    RunSchedule r;
    int64_t begin = 0, own = 0;
    for (const auto & [steps, lr] : phases) {
        if (lr > 0) {
            r.phases.push_back({begin, begin + steps, LrSchedule::cosine(lr, steps, warmup_ratio, min_lr_ratio)});
            own += steps;
        }
        begin += steps;
    }
    r.main = LrSchedule::cosine(peak_lr, total_steps - own, warmup_ratio, min_lr_ratio);
    return r;
}

double RunSchedule::at(int64_t step) const {
    int64_t skipped = 0;  // steps of own-schedule phases before `step`
    for (const auto & p : phases) {
        if (step >= p.end) skipped += p.end - p.begin;
        else if (step >= p.begin) return p.schedule.at(step - p.begin);
    }
    return main.at(step - skipped);
}

int64_t steps_per_epoch(int64_t n_samples, int64_t batch_size, int64_t world_size, int64_t grad_accum) {
    const int64_t per_step = std::max<int64_t>(1, batch_size * world_size);
    const int64_t micro = (n_samples + per_step - 1) / per_step;
    return std::max<int64_t>(1, micro / std::max<int64_t>(1, grad_accum));
}

int64_t total_optimizer_steps(int64_t n_samples, int64_t batch_size, int64_t world_size, int64_t grad_accum,
                              double epochs, int64_t max_steps) {
    if (max_steps > 0) return max_steps;
    const double per_epoch = static_cast<double>(steps_per_epoch(n_samples, batch_size, world_size, grad_accum));
    return std::max<int64_t>(1, static_cast<int64_t>(std::ceil(epochs * per_epoch)));
}

}  // namespace idamoe::train
