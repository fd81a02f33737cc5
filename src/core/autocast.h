// defines: AutocastScope, Fp32Region, check_compute_dtype — the one place that touches ATen's autocast state
//
// model.dtype: bfloat16 means mixed precision, not bf16 weights: parameters, gradients, the optimizer and
// the gradient all-reduce stay fp32 ("master weights"); only the forward runs under CUDA autocast with
// bf16 as the lower-precision type, so matmuls/convolutions run in bf16 and reductions/softmax/losses in
// fp32 by autocast's own cast policy. No loss scaling: bf16 has fp32's exponent range.
//
// IDA-MoE's autoencoder and GMM math must stay fp32 (log-space likelihoods over latent distances lose
// their meaning in bf16's 8-bit mantissa): moe::IdaRouterImpl::route opens an Fp32Region, which turns
// autocast off (CUDA and CPU) for its body and restores the caller's state after it.
//
// CPU runs train in fp32: `model.dtype: bfloat16` on a CPU device is refused by check_compute_dtype
// with a message, rather than silently ignored or honoured by CPU autocast, whose bf16 kernels are
// slower than fp32 ones on most CPUs and whose results the resume/equality tests would no longer pin down.
//
// Checked on an H100 with LibTorch 2.11 + CUDA 13 (docs/gpu.md, tests/unit/test_cuda.cpp): under the scope
// the decoders' logits are bf16 and within 5e-3 (relative L2) of the fp32 HF reference, gradients fp32,
// and the IDA router's decisions and loss equal the fp32 ones exactly.
// API: LibTorch 1.13-2.3 have at::autocast::set_enabled / set_autocast_gpu_dtype; 2.4 deprecates them
// for set_autocast_enabled(DeviceType, bool) / set_autocast_dtype(DeviceType, dtype) (guarded in the .cpp).
#pragma once

#include <torch/torch.h>

#include <string>

namespace idamoe::core {

// Throws ConfigError when `dtype` (model.dtype) cannot be honoured on `device`; returns true when the
// forward should run under bf16 autocast (bfloat16 on CUDA).
bool check_compute_dtype(const std::string & dtype, const torch::Device & device);

// Turns CUDA autocast on with bf16 for its lifetime when `enabled` (a no-op otherwise); restores the
// previous state and drops autocast's weight-cast cache when it ends (at::autocast's own contract).
class AutocastScope {
public:
    explicit AutocastScope(bool enabled);
    ~AutocastScope();
    AutocastScope(const AutocastScope &) = delete;
    AutocastScope & operator=(const AutocastScope &) = delete;

private:
    bool enabled_ = false;
    bool prev_enabled_ = false;
    at::ScalarType prev_dtype_ = at::kHalf;
};

// Autocast off (CUDA and CPU) for its lifetime; restores the previous state after. Cheap: four flag reads/writes.
class Fp32Region {
public:
    Fp32Region();
    ~Fp32Region();
    Fp32Region(const Fp32Region &) = delete;
    Fp32Region & operator=(const Fp32Region &) = delete;

private:
    bool prev_cuda_ = false;
    bool prev_cpu_ = false;
};

}  // namespace idamoe::core
