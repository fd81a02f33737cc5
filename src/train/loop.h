// defines: MicroBatchResult, TrainTask, DistHooks, LoopOptions, RunResult, TrainingStopped, run_training,
//          config_differences
//
// The optimizer-step loop, independent of what is trained: a TrainTask supplies micro-batches, the
// forward pass, weights (HF names) and the data position; the loop owns accumulation, loss normalisation
// (train/loss.h), the reducer calls, clipping, the non-finite guard, AdamW + schedule, metrics,
// checkpoints, resume and stop handling. The LLaVA trainer (train/trainer.h) and the tests' toy model
// both plug into it, so resume exactness is tested on the same code that trains.
//
// Step accounting: a step whose loss or gradient is non-finite is skipped (no update) but still counts,
// so the LR schedule does not shift. train.stop_after counts steps of this invocation.
#pragma once

#include "core/config.h"
#include "io/checkpoint.h"
#include "train/flops.h"
#include "train/metrics.h"

#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include <functional>
#include <map>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace idamoe::train {

struct MicroBatchResult {
    torch::Tensor ce_sum;                            // Σ token CE over target tokens (scalar, with graph)
    torch::Tensor aux_loss;                          // Σ over layers of weighted router losses (scalar) or undefined
    std::map<std::string, double> parts;             // unweighted aux parts for logging ("ae", "gmm", "react", "aux", "z")
    std::map<int64_t, torch::Tensor> counts_E;       // per MoE layer
    std::map<int64_t, torch::Tensor> entropy;        // per MoE layer
    int64_t n_tokens = 0;                            // real (unpadded) tokens, for tokens/s
    StepShape shape;                                 // for the FLOP model
    int64_t bad_samples = 0;                         // rows of this micro-batch the loader reported bad (masked)
};

class TrainTask {
public:
    virtual ~TrainTask() = default;
    // Reads the next micro-batch into slot i (0 <= i < grad_accum); returns its target-token count.
    virtual int64_t load_micro_batch(int64_t i) = 0;
    // Rows (real, unpadded tokens) of slot i over which its aux_loss is a mean, or -1 when the task's aux
    // loss is not such a mean. Known row counts let the loop weigh each micro-batch's aux loss by its
    // share of the step's rows on all ranks, so router losses are per-token means over the global batch
    // like the CE (train/loss.h); -1 falls back to averaging per-micro-batch means.
    virtual int64_t aux_rows(int64_t i) const { return -1; }
    // Forward of slot i in training mode.
    virtual MicroBatchResult forward(int64_t i) = 0;
    virtual double epoch() const = 0;
    virtual nlohmann::json data_state() const = 0;
    virtual void restore_data_state(const nlohmann::json & state) = 0;
    // Every parameter, in a deterministic order (the same on all ranks).
    virtual std::vector<std::pair<std::string, torch::Tensor>> named_parameters() = 0;
    // What a checkpoint stores / restores (HF names). Default: the trainable parameters.
    virtual io::TensorMap checkpoint_weights();
    virtual void load_checkpoint_weights(const io::TensorMap & weights);
    // Extra fields for trainer_state.json (e.g. base model reference, stage); checked on resume by the task.
    virtual nlohmann::json checkpoint_info() const { return nlohmann::json::object(); }
};

// Collective operations the loop needs; default = a single process.
struct DistHooks {
    int rank = 0, world_size = 1;
    std::function<void(bool sync)> prepare;          // before each micro-step's backward (GradReducer::prepare)
    std::function<void()> finalize;                  // after the last backward (GradReducer::finalize)
    // all-reduce sum of a few host numbers (one collective for all of them)
    std::function<std::vector<double>(const std::vector<double> &)> sum;
    std::function<torch::Tensor(const torch::Tensor &)> sum_tensor;  // all-reduce sum of a small tensor (expert counts)
    std::function<void()> barrier;
    // every rank's string, in rank order, on every rank (small blobs: per-rank checkpoint state)
    std::function<std::vector<std::string>(const std::string &)> gather;
    bool is_main() const { return rank == 0; }
};

struct LoopOptions {
    std::string resume;                              // "" | "auto" | checkpoint folder
    int64_t total_steps = 1;                         // schedule length (stop_after does not change it)
    const FlopModel * flops = nullptr;
    std::string device_name = "cpu";
    bool checkpoints = true;                         // false: never save (bench)
    DistHooks dist;
};

struct RunResult {
    int64_t start_step = 0, end_step = 0;
    std::vector<double> losses;                      // per optimizer step run in this invocation
    std::string stop_reason;                         // "done" | "stop_after" | "signal"
    std::string last_checkpoint;
    int64_t skipped_samples = 0;                     // bad samples, all ranks, since step 0 (carried across resumes)
    // Per-step timings (ms) for bench: data (loading micro-batches), forward, backward, optimizer (clip+step).
    std::vector<double> data_ms, forward_ms, backward_ms, optimizer_ms, step_ms;
    std::vector<int64_t> tokens;
    std::vector<double> step_flops;
};

// Thrown when the non-finite guard gives up; the message says what happened and which checkpoint is intact.
struct TrainingStopped : std::runtime_error {
    using std::runtime_error::runtime_error;
};

RunResult run_training(TrainTask & task, const core::Config & cfg, const LoopOptions & opt);

// Keys whose values differ between a checkpoint's stored config and the current one, ignoring keys that
// may change across a resume (run control, logging, workers). Each entry: "key: checkpoint X, now Y".
std::vector<std::string> config_differences(const std::string & stored_yaml, const std::string & current_yaml);

}  // namespace idamoe::train
