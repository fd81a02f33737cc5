// defines: load_torch_state_dict
//
// Reads a torch.save zip archive (PyTorch >= 1.6 format: <name>/data.pkl + <name>/data/<key>)
// holding a dict of tensors, i.e. a pytorch_model.bin or a LLaVA mm_projector.bin.
// LibTorch's own torch::pickle_load cannot be used: its unpickler turns collections.OrderedDict
// into None (it only expects OrderedDict as a tensor's empty backward-hook table), so every file
// written as torch.save(model.state_dict()) fails. This is a small unpickler for exactly the
// opcodes and globals torch.save emits; anything else is an error naming the file.
#pragma once

#include "io/safetensors.h"

#include <string>

namespace idamoe::io {

// Tensors come back contiguous and owning, in the dtype they were saved with.
TensorMap load_torch_state_dict(const std::string & path);

}  // namespace idamoe::io
