// defines: gradcheck (central finite differences vs autograd, double precision), expect_close
#pragma once

#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <functional>
#include <string>

namespace idamoe::test {

// Max error of autograd's d f / d p against central differences (f(p+h) - f(p-h)) / 2h over up to
// `max_entries` entries of p spread evenly. p and f must be double. The error of each entry is
// |analytic - numeric| / max(1, |numeric|); printed with `what`.
inline double gradcheck(const std::function<torch::Tensor()> & f, torch::Tensor p, const std::string & what,
                        int64_t max_entries = 24, double h = 1e-6) {
    TORCH_CHECK(p.scalar_type() == torch::kDouble, "gradcheck: ", what, " must be double");
    torch::Tensor loss = f();
    TORCH_CHECK(loss.scalar_type() == torch::kDouble && loss.numel() == 1, "gradcheck: ", what,
                " needs a double scalar loss");
    torch::Tensor g = torch::autograd::grad({loss}, {p}, {}, /*retain_graph=*/false, false, /*allow_unused=*/true)[0];
    if (!g.defined()) g = torch::zeros_like(p);
    g = g.reshape({-1});
    const int64_t n = p.numel(), step = std::max<int64_t>(1, n / max_entries);
    double worst = 0.0, worst_an = 0.0, worst_num = 0.0;
    torch::Tensor flat = p.detach().view({-1});
    for (int64_t i = 0; i < n; i += step) {
        const double orig = flat[i].item<double>();
        double fp, fm;
        {
            torch::NoGradGuard ng;
            flat[i].fill_(orig + h);
            fp = f().item<double>();
            flat[i].fill_(orig - h);
            fm = f().item<double>();
            flat[i].fill_(orig);
        }
        const double num = (fp - fm) / (2 * h), an = g[i].item<double>();
        const double err = std::abs(an - num) / std::max(1.0, std::abs(num));
        if (err >= worst) worst = err, worst_an = an, worst_num = num;
    }
    std::printf("gradcheck %-28s numel %6lld  max err %.3e (analytic %.6e, numeric %.6e)\n", what.c_str(),
                static_cast<long long>(n), worst, worst_an, worst_num);
    return worst;
}

// Prints max abs / max rel error of actual vs expected and returns true when every element satisfies
// |a - e| <= atol + rtol * |e|.
inline bool expect_close(const torch::Tensor & actual, const torch::Tensor & expected, const std::string & what,
                         double atol, double rtol) {
    const torch::Tensor a = actual.detach().to(torch::kDouble).cpu(), e = expected.detach().to(torch::kDouble).cpu();
    if (a.sizes() != e.sizes()) {
        std::printf("%s: shape mismatch\n", what.c_str());
        return false;
    }
    const torch::Tensor diff = (a - e).abs();
    const double max_abs = diff.max().item<double>();
    const double max_rel = (diff / e.abs().clamp_min(1e-300)).max().item<double>();
    const bool ok = (diff <= atol + rtol * e.abs()).all().item<bool>();
    std::printf("%-34s max abs %.3e  max rel %.3e  (atol %.0e, rtol %.0e) %s\n", what.c_str(), max_abs, max_rel, atol,
                rtol, ok ? "ok" : "FAIL");
    return ok;
}

}  // namespace idamoe::test
