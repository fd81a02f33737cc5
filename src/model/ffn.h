// defines: FfnImpl (the FFN slot of a decoder layer), FfnAux
//
// Each decoder layer holds one FfnImpl as its `mlp` submodule: the dense SwiGLU MLP, a dense MLP
// with an IDA-MoE router attached for stage-2 warm-up, or an MoE layer. The decoder calls
// forward(x, mask) and does not care which; the trainer reads aux() after the forward.
#pragma once

#include <torch/torch.h>

#include <map>
#include <string>

namespace idamoe::model {

// What an FFN slot produced besides its output, for the last forward call.
struct FfnAux {
    torch::Tensor loss;                          // weighted loss to add to CE (scalar), undefined if none
    std::map<std::string, torch::Tensor> parts;  // unweighted scalar parts for logging: "ae", "gmm", "react", "aux", "z"
    torch::Tensor counts_E;                      // tokens routed to each expert (padding excluded), float; undefined if dense
    torch::Tensor entropy;                       // mean routing entropy (scalar), undefined if dense
    torch::Tensor topk_idx_TK;                   // routing decisions of the last forward (real tokens first), may be undefined
    torch::Tensor topk_gates_TK;                 // their gates (same rows), may be undefined
    torch::Tensor probs_TN;                      // the router's distribution over all N experts (same rows; the
                                                 // one routing entropy is computed from), may be undefined
};

class FfnImpl : public torch::nn::Module {
public:
    // x_BTD: [B, T, D]; mask_BT: [B, T] with 1 for real tokens, 0 for padding (undefined = all real).
    virtual torch::Tensor forward(const torch::Tensor & x_BTD, const torch::Tensor & mask_BT) = 0;
    // Aux losses and routing statistics of the last forward; nullptr for a plain dense FFN.
    virtual const FfnAux * aux() const { return nullptr; }
};

}  // namespace idamoe::model
