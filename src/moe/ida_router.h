// defines: IdaRouterImpl — the IDA-MoE router (arXiv:2510.16448 §4): autoencoder + k GMM sets
//
// Gradient flow (the paper's "decoupling", §4.1-4.2):
//   u = sg(x)           the router never sends gradient into the backbone (eq. 12)
//   z = Encoder(u)      trained only by L_AE = ||u - Decoder(z)||^2 (eq. 13)
//   GMM_j on sg(z)      trained only by L_GMM,j (eq. 15) and L_react,j (eq. 23): the GMM does not train
//                       the encoder, so the latent space is shaped by reconstruction alone
//   routing, gates      computed from detached posteriors (eq. 16-19): the task loss reaches neither
//                       the autoencoder nor the GMMs.
//
// Autoencoder (our choice; the paper only says "a simple autoencoder"): the authors' code
// (youzark/IDA_MoE down_projector.py) uses LN -> Linear(D, D/4) -> GELU -> Dropout -> LN -> Linear(D/4, d).
// We keep the two LayerNorms (the first without affine parameters) and drop the dropout: LN on the input makes the latent scale independent of
// the hidden-state scale of the layer (which differs a lot between layers), the inner LN keeps z at
// O(1) so the GMM init (means ~ N(0, 1/L), var 1) sits on the data. Decoder: Linear(L,H) -> GELU ->
// Linear(H,D), reconstructing the raw u. H = ae_hidden (default 256: ~1.5% of two experts' FLOPs at
// D = 2048, F = 5632).
//
// Shape legend: T rows, D model dim, H ae hidden, L latent, C = N*M components, N experts, K ranks.
#pragma once

#include "moe/gmm.h"
#include "moe/router.h"

namespace idamoe::moe {

class IdaRouterImpl : public RouterImpl {
public:
    explicit IdaRouterImpl(const MoeLayerConfig & cfg);
    RouteOut route(const torch::Tensor & x_TD, const torch::Tensor & w_T) override;
    std::vector<torch::Tensor> mixing_weights() const override;

    torch::Tensor encode(const torch::Tensor & u_TD);  // z_TL
    GmmSetImpl & gmm_set(int64_t j) { return *gmm->ptr<GmmSetImpl>(j); }
    // Re-initialises every set's means at randomly chosen latent points of the real rows of x_TD (plus
    // 0.1-std noise), using the router's generator. Opt-in: call it on every data-parallel rank with
    // the same batch, or broadcast afterwards.
    void init_means_from_data(const torch::Tensor & x_TD, const torch::Tensor & w_T = {});

    torch::nn::Sequential encoder{nullptr}, decoder{nullptr};
    torch::nn::ModuleList gmm{nullptr};
};

}  // namespace idamoe::moe
