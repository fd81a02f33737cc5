// AdamW's per-element update; see adamw_kernel.h.
#include "train/adamw_kernel.h"

#include <cmath>

namespace idamoe::train {

void adamw_fused_range(float * __restrict p, const float * __restrict g, float * __restrict m, float * __restrict v,
                       int64_t n, bool do_decay, float decay, float b1, float a1, float b2, float a2, float bc2_sqrt,
                       float eps, float neg_step) {
    for (int64_t i = 0; i < n; ++i) {
        const float gi = g[i];
        float x = p[i];
        if (do_decay) x = x * decay;              // p.mul_(1 - lr * wd)
        float mi = m[i] * b1;                     // exp_avg.mul_(b1)
        mi = mi + a1 * gi;                        //        .add_(grad, 1 - b1)
        float vi = v[i] * b2;                     // exp_avg_sq.mul_(b2)
        vi = vi + a2 * gi * gi;                   //           .addcmul_(grad, grad, 1 - b2)
        const float denom = std::sqrt(vi) / bc2_sqrt + eps;  // (exp_avg_sq.sqrt() / bc2_sqrt).add_(eps)
        x = x + neg_step * mi / denom;            // p.addcdiv_(exp_avg, denom, -step_size)
        m[i] = mi;
        v[i] = vi;
        p[i] = x;
    }
}

}  // namespace idamoe::train
