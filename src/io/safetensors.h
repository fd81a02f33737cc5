// defines: SafetensorsFile, TensorMap, load_safetensors, load_checkpoint_dir, save_safetensors
//
// safetensors (huggingface/safetensors README): u64 little-endian header length N, N bytes of JSON
// {name: {dtype, shape, data_offsets:[begin,end]}, "__metadata__": {...}}, then the data buffer.
// Files are memory-mapped; every offset is validated against the file size before any tensor is
// created. Errors throw std::runtime_error naming the file and the tensor or key.
#pragma once

#include <torch/torch.h>

#include <map>
#include <memory>
#include <string>
#include <vector>

namespace idamoe::io {

using TensorMap = std::map<std::string, torch::Tensor>;  // ordered: deterministic file layout

struct TensorInfo {
    std::string name;
    std::string dtype;          // "F32", "BF16", ...
    std::vector<int64_t> shape;
    uint64_t begin = 0, end = 0; // relative to the data buffer
};

// A memory-mapped safetensors file. Tensors returned by get() are copies (owning memory) unless
// `zero_copy` is requested, in which case they alias the mapping and keep it alive.
class SafetensorsFile {
public:
    explicit SafetensorsFile(const std::string & path);
    ~SafetensorsFile();
    SafetensorsFile(const SafetensorsFile &) = delete;
    SafetensorsFile & operator=(const SafetensorsFile &) = delete;

    const std::string & path() const { return path_; }
    const std::vector<TensorInfo> & tensors() const { return infos_; }
    const std::map<std::string, std::string> & metadata() const { return metadata_; }
    bool contains(const std::string & name) const;
    torch::Tensor get(const std::string & name, bool zero_copy = false) const;

private:
    struct Mapping;
    std::string path_;
    std::shared_ptr<Mapping> map_;
    std::vector<TensorInfo> infos_;
    std::map<std::string, size_t> index_;
    std::map<std::string, std::string> metadata_;
};

// All tensors of one safetensors file (copied into owning tensors).
TensorMap load_safetensors(const std::string & path);

// All tensors of a Hugging Face model directory: model.safetensors, or the shards listed in
// model.safetensors.index.json, or pytorch_model.bin (torch.save zip format). Throws if none.
TensorMap load_checkpoint_dir(const std::string & dir);

// Writes tensors (any of F64/F32/F16/BF16/I64/I32/I16/I8/U8/BOOL) contiguous, little-endian, with the
// header space-padded to a multiple of 8. Writes to `path` directly; callers wanting atomicity
// write to a temporary name and rename.
void save_safetensors(const std::string & path, const TensorMap & tensors,
                      const std::map<std::string, std::string> & metadata = {{"format", "pt"}});

}  // namespace idamoe::io
