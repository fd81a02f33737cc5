// defines: all_reduce_sum, config_hash, check_same_config (see global.h)
#include "dist/global.h"

#include <cstdio>

namespace idamoe::dist {

torch::Tensor all_reduce_sum(Comm & comm, const torch::Tensor & t, const std::string & what) {
    torch::NoGradGuard no_grad;
    if (comm.world_size() == 1) return t.detach().clone();
    // Gloo/NCCL reduce dense buffers on the comm device; integer counts stay exact as int64.
    torch::Tensor buf = t.detach().to(comm.device(), /*non_blocking=*/false, /*copy=*/true).contiguous();
    comm.all_reduce_(buf, ReduceOp::kSum, what).wait();
    return buf.to(t.device());
}

std::vector<double> all_reduce_sum(Comm & comm, const std::vector<double> & values, const std::string & what) {
    if (comm.world_size() == 1 || values.empty()) return values;
    torch::Tensor t = torch::tensor(values, torch::kDouble);
    torch::Tensor sum = all_reduce_sum(comm, t, what).to(torch::kCPU);
    return std::vector<double>(sum.data_ptr<double>(), sum.data_ptr<double>() + sum.numel());
}

std::string config_hash(const std::string & text) {
    uint64_t h = 14695981039346656037ull;  // FNV-1a 64-bit offset basis and prime (Fowler/Noll/Vo)
    for (unsigned char c : text) {
        h ^= c;
        h *= 1099511628211ull;
    }
    char buf[17];
    std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(h));
    return buf;
}

void check_same_config(Comm & comm, const std::string & hash) {
    const std::vector<std::string> all = comm.all_gather_bytes(hash, "config hash check");
    for (int r = 1; r < static_cast<int>(all.size()); ++r) {
        if (all[r] != all[0])
            throw CommError("dist: config mismatch: rank " + std::to_string(r) + " has config hash " + all[r] +
                            " but rank 0 has " + all[0] + " (seen by rank " + std::to_string(comm.rank()) +
                            "); every rank must load the same YAML with the same overrides");
    }
}

}  // namespace idamoe::dist
