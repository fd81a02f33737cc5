// defines: adamw_fused_range — the per-element AdamW update of AdamW's fused CPU path (optimizer.cpp)
#pragma once

#include <cstdint>

namespace idamoe::train {

// n elements of one parameter: p, m, v updated in place from g, with the float operations of torch's
// single-tensor AdamW in the same order. Built without math errno (CMakeLists.txt) so that sqrt is one
// SIMD instruction and the loop vectorises; no torch header, so it needs no precompiled header.
void adamw_fused_range(float * __restrict p, const float * __restrict g, float * __restrict m, float * __restrict v,
                       int64_t n, bool do_decay, float decay, float b1, float a1, float b2, float a2, float bc2_sqrt,
                       float eps, float neg_step);

}  // namespace idamoe::train
