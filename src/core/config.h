// defines: Config and its per-module structs, load_config, config_to_yaml, ConfigError
//
// YAML is parsed only here (src/core/config.cpp). Every other folder receives these plain structs.
// Every key of the YAML schema is listed exactly once, in the visit_* functions of config.cpp,
// which both read and write the structs, so --print-config and parsing cannot drift apart.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace idamoe::core {

// Thrown for any bad configuration input; the message names the file, line and dotted key.
struct ConfigError : std::runtime_error {
    using std::runtime_error::runtime_error;
};

struct ModelConfig {
    std::string llm_path;                  // HF directory: config.json + safetensors (+ tokenizer files)
    std::string dtype = "float32";         // compute dtype: float32 | bfloat16 (bf16 autocast on CUDA only)
    bool activation_checkpointing = false; // recompute each decoder layer in backward
    std::string device = "auto";           // auto | cpu | cuda
};

struct VisionConfig {
    std::string path;                      // HF directory of a CLIP or SigLIP vision tower ("" = text-only)
    int64_t select_layer = -2;             // LLaVA-1.5 mm_vision_select_layer
    std::string select_feature = "patch";  // patch | cls_patch
    std::string image_aspect_ratio = "pad";// pad | resize
};

struct ProjectorConfig {
    std::string type = "mlp2x_gelu";       // mlp2x_gelu | linear
};

struct MoeConfig {
    std::string router = "ida";            // ida | linear_aux | st_moe | xmoe | auxfree | deepseek
    int64_t num_experts = 4;               // MoE-LLaVA uses 4 experts, top-2
    int64_t top_k = 2;
    int64_t latent_dim = 32;               // IDA-MoE §4.1: 32-d latent
    int64_t centers_per_expert = 16;       // IDA-MoE §4.1: 16 Gaussian components per expert
    double alpha = 0.01;                   // weight of L_AE (IDA-MoE §4.1)
    double beta = 0.01;                    // weight of sum_j (L_GMM,j + L_react,j) (IDA-MoE §4.1)
    bool reactivation = true;              // IDA-MoE eq. 22-23
    std::string layers = "every_other";    // every_other | all | explicit list "0,2,5"
    double variance_floor = 1e-4;          // lower bound on GMM variances
    int64_t ae_hidden = 256;               // autoencoder hidden width
    bool distinct_experts = true;          // rank j picks among experts not chosen by ranks < j
    double capacity_factor = 0.0;          // 0 = dropless; > 0 drops overflow (baselines)
    double aux_coef = 0.01;                // load-balancing coefficient (linear_aux; MoE-LLaVA)
    double z_loss_coef = 0.001;            // router z-loss (st_moe)
    int64_t num_shared_experts = 1;        // deepseek
    double bias_update_rate = 0.001;       // auxfree
};

struct DatasetEntry {
    std::string json;                      // LLaVA JSON file
    std::string image_root;                // folder that image paths are relative to
};

// One phase of a data curriculum: `steps` optimizer steps drawn from its own files only.
struct CurriculumPhase {
    int64_t steps = 0;
    double lr = 0.0;                       // > 0: the phase's own warm-up + cosine at this peak (train/schedule.h)
    int64_t batch_size = 0;                // > 0: the phase's micro-batch per rank; 0: data.batch_size
    std::vector<DatasetEntry> train;
};

struct DataConfig {
    std::vector<DatasetEntry> train;       // one or more LLaVA JSON files
    // Phases trained in order before data.train, which then runs for the remaining steps (one learning-rate
    // schedule over all of them). Empty: data.train from step 0.
    std::vector<CurriculumPhase> curriculum;
    std::string template_name = "plain";   // plain | moe_llava | chatml  (YAML key: template)
    std::string tokenizer;                 // "" = from model.llm_path
    int64_t batch_size = 4;                // per rank, per micro-step
    int64_t grad_accum = 1;
    int64_t max_length = 2048;
    int64_t num_workers = 2;
    int64_t prefetch = 4;
    bool group_by_modality_length = true;
    double max_bad_fraction = 0.05;        // stop when more samples than this are malformed
};

// Optimizer steps of all data.curriculum phases together.
inline int64_t curriculum_steps(const DataConfig & d) {
    int64_t n = 0;
    for (const auto & p : d.curriculum) n += p.steps;
    return n;
}

// A curriculum phase's micro-batch per rank: its own batch_size, or data.batch_size when that is 0.
inline int64_t phase_batch_size(const DataConfig & d, const CurriculumPhase & p) {
    return p.batch_size > 0 ? p.batch_size : d.batch_size;
}

struct TrainConfig {
    int64_t stage = 1;                     // 1 projector alignment | 2 dense finetune + GMM warm-up | 3 MoE
    std::string init_from;                 // previous stage's output directory ("" for stage 1)
    std::string output_dir = "runs/out";
    int64_t max_steps = 0;                 // > 0 overrides epochs
    double epochs = 1.0;
    double lr = 2e-5;
    double min_lr_ratio = 0.0;
    double warmup_ratio = 0.03;            // MoE-LLaVA warm-up ratio
    double weight_decay = 0.0;
    double adam_beta1 = 0.9;
    double adam_beta2 = 0.999;
    double adam_eps = 1e-8;
    double grad_clip = 1.0;                // 0 disables
    // Learning-rate multiplier for the IDA-MoE GMM sets (means, variances, mixing logits); 1 = the paper
    // (one lr for all). The GMM is a density of the latent, which the autoencoder moves as it trains;
    // under Adam a mean moves at most ~lr per step, so at a task-sized lr over a short run the GMM cannot
    // follow the latent (demo: the GMM NLL grew through stage 2 with variances still at their init).
    double gmm_lr_scale = 1.0;
    int64_t seed = 42;
    int64_t log_every = 10;
    int64_t save_every = 500;
    int64_t stop_after = 0;                // end cleanly with a checkpoint after N steps (0 = never)
    int64_t max_nonfinite_in_row = 10;
    std::vector<std::string> trainable;    // empty = stage default
};

struct DistConfig {
    std::string backend = "auto";          // auto | gloo | nccl
    int64_t timeout_s = 300;
    int64_t bucket_mb = 25;
    bool overlap = true;
};

struct CheckpointConfig {
    int64_t keep_last = 3;
    bool save_optimizer = true;
};

struct LoggingConfig {
    std::string level = "info";            // trace | debug | info | warn | error
    bool all_ranks = false;                // log at info level from every rank
    std::string jsonl = "metrics.jsonl";   // relative to train.output_dir
    bool progress_bar = true;
};

struct Config {
    std::string source_file;               // the top-level YAML file
    ModelConfig model;
    VisionConfig vision;
    ProjectorConfig projector;
    MoeConfig moe;
    DataConfig data;
    TrainConfig train;
    DistConfig dist;
    CheckpointConfig checkpoint;
    LoggingConfig logging;
};

// Loads FILE (following base: chains), applies "key.path=value" overrides, validates, returns it.
Config load_config(const std::string & file, const std::vector<std::string> & overrides = {});
// Parses YAML text as if read from `name` (relative paths resolve against base_dir).
Config load_config_from_string(const std::string & yaml_text, const std::string & name,
                               const std::string & base_dir,
                               const std::vector<std::string> & overrides = {});
// The fully resolved config as YAML (what --print-config prints and checkpoints store).
std::string config_to_yaml(const Config & cfg);
// Parse moe.layers against a decoder depth: every_other = 0,2,4,..; all; or "0,2,5".
std::vector<int64_t> resolve_moe_layers(const std::string & spec, int64_t n_layer);

}  // namespace idamoe::core
