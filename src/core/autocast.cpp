// defines: AutocastScope, Fp32Region, check_compute_dtype (see autocast.h; CUDA branch checked on an H100, docs/gpu.md)
#include "core/autocast.h"

#include "core/config.h"

#include <ATen/autocast_mode.h>
#include <torch/version.h>

// LibTorch 2.4 replaced the per-device functions by device-type-taking ones (the old ones are deprecated).
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 4)
#define IDAMOE_AUTOCAST_DEVICE_TYPE_API 1
#endif

namespace idamoe::core {
namespace {

bool cuda_enabled() {
#ifdef IDAMOE_AUTOCAST_DEVICE_TYPE_API
    return at::autocast::is_autocast_enabled(at::kCUDA);
#else
    return at::autocast::is_enabled();
#endif
}
void set_cuda_enabled(bool on) {
#ifdef IDAMOE_AUTOCAST_DEVICE_TYPE_API
    at::autocast::set_autocast_enabled(at::kCUDA, on);
#else
    at::autocast::set_enabled(on);
#endif
}
at::ScalarType cuda_dtype() {
#ifdef IDAMOE_AUTOCAST_DEVICE_TYPE_API
    return at::autocast::get_autocast_dtype(at::kCUDA);
#else
    return at::autocast::get_autocast_gpu_dtype();
#endif
}
void set_cuda_dtype(at::ScalarType t) {
#ifdef IDAMOE_AUTOCAST_DEVICE_TYPE_API
    at::autocast::set_autocast_dtype(at::kCUDA, t);
#else
    at::autocast::set_autocast_gpu_dtype(t);
#endif
}
bool cpu_enabled() {
#ifdef IDAMOE_AUTOCAST_DEVICE_TYPE_API
    return at::autocast::is_autocast_enabled(at::kCPU);
#else
    return at::autocast::is_cpu_enabled();
#endif
}
void set_cpu_enabled(bool on) {
#ifdef IDAMOE_AUTOCAST_DEVICE_TYPE_API
    at::autocast::set_autocast_enabled(at::kCPU, on);
#else
    at::autocast::set_cpu_enabled(on);
#endif
}

}  // namespace

bool check_compute_dtype(const std::string & dtype, const torch::Device & device) {
    if (dtype == "float32") return false;
    if (dtype != "bfloat16") throw ConfigError("model.dtype must be float32 or bfloat16, got '" + dtype + "'");
    if (!device.is_cuda())
        throw ConfigError("model.dtype: bfloat16 is bf16 autocast on CUDA, but this run is on " + device.str() +
                          "; CPU runs train in float32 (set model.dtype: float32, or model.device: cuda on a GPU machine)");
    return true;
}

AutocastScope::AutocastScope(bool enabled) : enabled_(enabled) {
    if (!enabled_) return;
    prev_enabled_ = cuda_enabled();
    prev_dtype_ = cuda_dtype();
    set_cuda_dtype(at::kBFloat16);
    set_cuda_enabled(true);
    at::autocast::increment_nesting();
}

AutocastScope::~AutocastScope() {
    if (!enabled_) return;
    // The cache holds bf16 copies of fp32 weights for the scope's forward; outliving it would keep stale
    // copies of weights that the optimizer is about to change.
    if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
    set_cuda_enabled(prev_enabled_);
    set_cuda_dtype(prev_dtype_);
}

Fp32Region::Fp32Region() : prev_cuda_(cuda_enabled()), prev_cpu_(cpu_enabled()) {
    if (prev_cuda_) set_cuda_enabled(false);
    if (prev_cpu_) set_cpu_enabled(false);
}

Fp32Region::~Fp32Region() {
    if (prev_cuda_) set_cuda_enabled(true);
    if (prev_cpu_) set_cpu_enabled(true);
}

}  // namespace idamoe::core
