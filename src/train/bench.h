// defines: BenchOptions, run_bench — `idamoe-train bench` (training-step throughput on synthetic data)
//
// Builds the decoder from --model (optionally upcycled into an MoE at every other layer, and with a
// frozen vision tower + projector whose features are prepended to each sequence), trains it on random
// tokens through the same loop as real training (train/loop.h: AdamW, clipping, accumulation 1, no
// checkpoints), and reports one JSON object: tokens/s, median step time, the forward/backward/
// optimizer/data breakdown, achieved GFLOP/s (FLOP model of train/flops.h), MFU on a known GPU, peak RSS.
// Every parameter of the decoder (experts and routers included) trains; the vision tower never does.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>

namespace idamoe::train {

struct BenchOptions {
    std::string model_dir;
    int64_t batch = 4, seq = 256, steps = 10, warmup = 2, threads = 0;  // threads 0 = LibTorch default
    std::string moe;                    // "" = dense; else a router kind (ida, linear_aux, ...)
    int64_t experts = 4, top_k = 2;
    std::string vision_dir;
    int64_t images = 1;                 // images per sequence when vision_dir is set
    std::string device = "auto";
    std::string dtype = "float32";      // bfloat16: forward + loss under CUDA bf16 autocast, as model.dtype (CUDA only)
    bool activation_checkpointing = false;
    uint64_t seed = 0;
    // Optimizer as the Hugging Face peer (scripts/bench_vs_hf.py) runs it: constant lr, AdamW without
    // weight decay, no clipping (0; the norm is still computed for the non-finite guard).
    double lr = 1e-4, grad_clip = 0.0;
    // Train on the first drawn batch at every step. The first batch is torch.randint(0, V, (B, T),
    // generator=torch.Generator().manual_seed(seed)) exactly, i.e. the peer's tokens, so losses compare.
    bool same_batch = false;
    bool matmul_reference = false;      // also time a 1024x1024 fp32 matmul (same threads) for "% of matmul"
};

nlohmann::json run_bench(const BenchOptions & o);

}  // namespace idamoe::train
