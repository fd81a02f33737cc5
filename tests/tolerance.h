// defines: close_to_ref — the tolerance rule of the reference-tensor tests (tests/fixtures/hf README)
#pragma once

#include <catch2/catch.hpp>
#include <torch/torch.h>

#include <cstdio>
#include <string>

namespace idamoe::test {

// |got - ref| <= atol + rtol*|ref| elementwise, atol = atol_scale * max|ref|, compared in float64 on the
// CPU (got may live on a GPU). Float32 runs of the same math: the fixtures' own float64 check shows HF's
// float32 outputs within ~6e-6 of exact, so 1e-4 leaves a 10x margin for another summation order without
// admitting a wrong formula (a wrong eps or activation moves outputs ~1e-2). Prints the errors seen.
inline bool close_to_ref(const torch::Tensor & got, const torch::Tensor & ref, const std::string & what,
                         double atol_scale = 1e-4, double rtol = 1e-4) {
    INFO(what << ": got " << got.sizes() << ", ref " << ref.sizes());
    REQUIRE(got.sizes() == ref.sizes());
    const torch::Tensor g = got.detach().to(torch::kCPU, torch::kFloat64), r = ref.detach().to(torch::kCPU, torch::kFloat64);
    const double max_ref = r.abs().max().item<double>();
    const double atol = atol_scale * max_ref;
    const torch::Tensor err = (g - r).abs();
    const double max_abs = err.max().item<double>();
    const double max_rel = (err / r.abs().clamp_min(1e-12)).max().item<double>();
    const bool ok = (err <= atol + rtol * r.abs()).all().item<bool>();
    std::printf("  %-58s max|ref| %.3g  max abs err %.3g  (atol %.3g)  max rel err %.3g %s\n", what.c_str(), max_ref,
                max_abs, atol, max_rel, ok ? "ok" : "FAIL");
    return ok;
}

}  // namespace idamoe::test
