// defines: CheckpointError, CheckpointData, save_checkpoint, load_checkpoint, verify_checkpoint,
//          list_checkpoints, resolve_resume, capture_rng_state, rng_state_of_rank, restore_rng_state, crc32
//
// A checkpoint is a folder <output_dir>/checkpoint-<step, 8 digits>/ holding
//   model.safetensors      trainable (or all) weights under their HF/LLaVA names
//   optimizer.safetensors  AdamW state (exp_avg/<name>, exp_avg_sq/<name>, step/<name>)
//   rng.safetensors        CPU generator state (+ one per CUDA device): "cpu", "cuda:<i>" in a one-process run;
//                          "rank<r>/cpu", "rank<r>/cuda:<i>" for EVERY rank r of a data-parallel run
//   trainer_state.json     step, schedule, sampler position(s), world size, counters, base model reference
//                          (owned by the trainer; data-parallel runs keep one sampler position per rank)
//   config.yaml            the resolved config (core::config_to_yaml)
//   manifest.json          format version + size and CRC-32 of every file above; written last
// It is written into checkpoint-<step>.tmp/, every file and the folder fsynced, then renamed; then
// <output_dir>/latest (the newest complete checkpoint's folder name) is replaced atomically. A failed write
// (full disk, quota) removes the temporary folder and leaves the previous checkpoint and `latest` valid.
// A temporary folder left by a killed save is never resumed from, and the next save removes it.
#pragma once

#include "io/safetensors.h"

#include <nlohmann/json.hpp>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace idamoe::io {

constexpr int kCheckpointFormatVersion = 1;

struct CheckpointError : std::runtime_error {
    using std::runtime_error::runtime_error;
};
// save_checkpoint failed (disk full, quota, permissions): an I/O failure of this run, unlike a
// CheckpointError from loading, which means the checkpoint given to resume from is unusable.
struct CheckpointWriteError : CheckpointError {
    using CheckpointError::CheckpointError;
};

struct CheckpointData {
    int64_t step = 0;
    TensorMap model;
    TensorMap optimizer;
    TensorMap rng;                       // capture_rng_state()
    nlohmann::json trainer_state = nlohmann::json::object();
    std::string config_yaml;
};

// Writes a checkpoint for data.step and returns its final folder. keep_last > 0 deletes older complete
// checkpoints beyond the newest keep_last. Throws CheckpointWriteError (naming the file and the OS error, and
// which earlier checkpoint is still valid) on any write failure.
std::string save_checkpoint(const std::string & output_dir, const CheckpointData & data, int64_t keep_last);

// Verifies the manifest (sizes + CRC-32) and loads everything. Throws CheckpointError when invalid.
CheckpointData load_checkpoint(const std::string & dir);

// "" when `dir` is a complete checkpoint whose files match the manifest; otherwise what is wrong.
std::string verify_checkpoint(const std::string & dir);

// Complete (renamed) checkpoint folders in output_dir, oldest first by step.
std::vector<std::string> list_checkpoints(const std::string & output_dir);

// spec "auto": the checkpoint named by <output_dir>/latest, else the newest valid one; a corrupt candidate
// is reported (spdlog warn) and the previous one is tried. Returns "" when there is none (fresh start).
// Any other spec is a checkpoint folder that must verify, or CheckpointError says why not.
std::string resolve_resume(const std::string & output_dir, const std::string & spec);

TensorMap capture_rng_state();                 // "cpu", "cuda:<i>" as uint8 tensors
// This rank's entries of a checkpoint's RNG map (prefix "rank<r>/" removed); the unprefixed entries of a
// one-process checkpoint for rank 0. Throws CheckpointError when the checkpoint holds none for `rank`.
TensorMap rng_state_of_rank(const TensorMap & rng, int rank);
void restore_rng_state(const TensorMap & rng); // throws CheckpointError if a CUDA state has no device here

uint32_t crc32(const void * data, size_t n, uint32_t crc = 0);  // IEEE 802.3 (zlib-compatible)

// Streams tensors to a safetensors file with checked writes; returns {bytes, crc32}. Used for checkpoints and export.
std::pair<uint64_t, uint32_t> write_safetensors_checked(const std::string & path, const TensorMap & tensors,
                                                        const std::map<std::string, std::string> & metadata = {{"format", "pt"}});

}  // namespace idamoe::io
