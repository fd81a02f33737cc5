// defines: LrSchedule, RunSchedule, steps_per_epoch, total_optimizer_steps
//
// HF get_cosine_schedule_with_warmup (transformers/optimization.py), which MoE-LLaVA uses in all stages:
// the optimizer step with 0-based index s uses lr(s): linear 0 -> peak over `warmup` steps, then a
// half cosine down to min_lr_ratio*peak at total_steps. Like HF, step 0 runs at lr 0 when warm-up > 0.
#pragma once

#include <cstdint>
#include <utility>
#include <vector>

namespace idamoe::train {

struct LrSchedule {
    double peak_lr = 2e-5;
    int64_t total_steps = 1;
    int64_t warmup_steps = 0;     // ceil(warmup_ratio * total_steps) (HF TrainingArguments.get_warmup_steps)
    double min_lr_ratio = 0.0;    // floor of the cosine as a fraction of peak (0 = HF)

    static LrSchedule cosine(double peak_lr, int64_t total_steps, double warmup_ratio, double min_lr_ratio);
    double at(int64_t step) const;  // lr of the optimizer step with 0-based index `step`
};

// A run's learning rates with data.curriculum: a phase given its own peak runs its own warm-up and cosine
// over its steps, like a separate run that keeps the optimizer state; every other step follows `main`,
// which counts only those steps (so without such phases it is the run's one cosine, as before).
struct RunSchedule {
    struct Phase {
        int64_t begin = 0, end = 0;  // optimizer steps [begin, end)
        LrSchedule schedule;
    };
    LrSchedule main;
    std::vector<Phase> phases;  // in step order

    // phases: (steps, peak lr) of each curriculum phase in order; peak 0 = the phase follows `main`.
    static RunSchedule cosine(double peak_lr, int64_t total_steps, double warmup_ratio, double min_lr_ratio,
                              const std::vector<std::pair<int64_t, double>> & phases);
    double at(int64_t step) const;
};

// Optimizer steps per epoch as HF computes them: ceil(samples / (batch*world)) micro-batches, // grad_accum.
int64_t steps_per_epoch(int64_t n_samples, int64_t batch_size, int64_t world_size, int64_t grad_accum);
// max_steps > 0 wins; otherwise ceil(epochs * steps_per_epoch), at least 1.
int64_t total_optimizer_steps(int64_t n_samples, int64_t batch_size, int64_t world_size, int64_t grad_accum,
                              double epochs, int64_t max_steps);

}  // namespace idamoe::train
