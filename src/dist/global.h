// defines: all_reduce_sum (tensor / host values), config_hash, check_same_config — job-wide agreement
//
// Small blocking helpers for the trainer: metrics summed over ranks before they are logged (expert loads
// before CV/entropy, loss and token counts), and the start-up check that every rank runs the same config.
// All are collective: every rank must call them in the same order. At world size 1 they return the input.
#pragma once

#include <torch/torch.h>

#include <string>
#include <vector>

#include "dist/comm.h"

namespace idamoe::dist {

// Sum over ranks of a small tensor (e.g. counts_E); returns a new tensor on t's device with t's dtype.
torch::Tensor all_reduce_sum(Comm & comm, const torch::Tensor & t, const std::string & what = "metric all-reduce");
// Sum over ranks of a few host numbers, e.g. {loss_sum, n_tokens}; summed in double precision.
std::vector<double> all_reduce_sum(Comm & comm, const std::vector<double> & values,
                                   const std::string & what = "metric all-reduce");

// 16 hex digits of the 64-bit FNV-1a hash of `text` (e.g. core::config_to_yaml(cfg)).
std::string config_hash(const std::string & text);
// Throws CommError on every rank if any rank's hash differs from rank 0's, naming both hashes and ranks.
void check_same_config(Comm & comm, const std::string & hash);

}  // namespace idamoe::dist
