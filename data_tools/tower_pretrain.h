// defines: TowerPretrainOptions, TowerPretrainReport, pretrain_tower
//
// Stand-in for CLIP's pretraining, for the demo's tiny tower only: a short supervised run that teaches a
// random CLIP-layout tower to say, in every patch token, what the grid cell under it holds (shape or
// empty, colour, size) and, with `position`, where that cell is (column and row). Real LLaVA stacks start
// from a tower whose features already separate such things and keep where they are; a random tower does
// not (a logistic-regression probe on the demo's random 128-wide tower reads colour 96% but shape 54% from
// an object's own token; after pretraining without position heads its column 41%, left/right 60%), and
// the decoder then never learned shape, or left/right, within the demo's budget. The trainer itself keeps
// the tower frozen, as MoE-LLaVA does; this runs once, in make-tiny-models, on images of their own split
// (gen-shapes-dataset --n-tower), and the linear head is thrown away. Position heads once looked harmful
// (stage-2 shape 22.5% twice, with 1-3 QA turns per image; docs/demo_notes.md, "Before the tower was
// pretrained"); with the demo's current data they are not (docs/demo_notes.md).
#pragma once

#include "data/images.h"
#include "model/vision_tower.h"
#include "shapes_world.h"

#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include <algorithm>
#include <array>
#include <filesystem>
#include <fstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace idamoe::demo {

struct TowerPretrainOptions {
    std::string labels;         // tower_labels.jsonl (gen-shapes-dataset --n-tower)
    std::string image_root;     // "" = <labels folder>/images
    int64_t steps = 1000;
    int64_t batch = 64;
    double lr = 1e-3;
    int64_t select_layer = -2;  // the layer LLaVA reads (vision.select_layer); later layers get no gradient
    uint64_t seed = 0;
    double holdout = 0.1;       // last fraction of the images: reported, never trained on
    bool position = false;      // also column and row heads on every token (where CLIP features say "where")
    bool scene = false;         // also, on every token, which shapes and colours the whole image holds and
                                // how many of each shape (CLIP patch tokens carry image-level content too)
    bool scene_counts = true;   // with `scene`: also the per-shape count heads (false: presence only)
    bool scene_on_objects = false;  // scene heads on the object tokens only: background tokens stay empty,
                                    // so the objects still stand out from them
    bool scene_on_cls = false;  // scene heads on the CLS token only (for select_feature cls_patch): the
                                // patch tokens stay about their own cell
    double scene_weight = 1.0;  // scale of the scene losses (summed over 10 attributes + 4 counts) against
                                // the cell heads' cross-entropies
    int64_t scene_from = 0;     // the scene losses join at this step: the cell features form first
    int64_t scene_dims = 0;     // > 0: the scene heads read only the first scene_dims widths of a token and
                                // the cell heads only the rest, so "this image holds a circle" and "I am a
                                // circle" take different directions (0: both read all widths)
};

struct TowerPretrainReport {
    int64_t train_images = 0, heldout_images = 0;
    // accuracy on the held-out images' object tokens
    double shape = 0, colour = 0, size = 0, column = 0, final_loss = 0;
    double scene_presence = 0, scene_count = 0;  // all tokens, all attributes / all shapes (with `scene`)
    double scene_presence_floor = 0, scene_count_floor = 0;  // the same for "absent" / "0" everywhere
};

// Scenes hold at most 3 objects (shapes_world.h), so a per-shape count is 0..3.
constexpr int64_t kMaxSceneCount = 3;

namespace detail {
inline int64_t index_of(const std::vector<std::string> & names, const std::string & v, const std::string & where) {
    const auto it = std::find(names.begin(), names.end(), v);
    if (it == names.end()) throw std::runtime_error(where + ": unknown value '" + v + "'");
    return it - names.begin();
}
}  // namespace detail

// Trains `tower` in place (all parameters). Labels: one JSON object a line,
// {"image": PATH, "grid": G, "objects": [{"shape", "colour", "size", "cell": [column, row]}]}; G must equal
// the tower's patches per side, so that token t = row * G + column sits on that cell. Names are those of
// shapes_world.h.
inline TowerPretrainReport pretrain_tower(model::VisionTower & tower, const data::ImageProcessorConfig & proc,
                                          const TowerPretrainOptions & o) {
    namespace fs = std::filesystem;
    const std::vector<std::string> & shapes = kShapeNames, & sizes = kSizeNames;
    std::vector<std::string> colours;
    for (const auto & c : kColours) colours.push_back(c.name);
    const int64_t G = tower->config().grid(), T = G * G;
    const int64_t S = static_cast<int64_t>(shapes.size()), C = static_cast<int64_t>(colours.size()),
                  Z = static_cast<int64_t>(sizes.size());
    const std::string root = o.image_root.empty() ? (fs::path(o.labels).parent_path() / "images").string() : o.image_root;

    // ---- labels and images: class S / C / Z means "no object in this cell" ----
    std::ifstream in(o.labels);
    if (!in) throw std::runtime_error(o.labels + ": cannot read");
    std::vector<torch::Tensor> pixels;
    std::vector<int64_t> y_shape, y_colour, y_size;
    std::vector<float> y_present;   // per image: S + C, 1 where the image holds that shape / colour
    std::vector<int64_t> y_count;   // per image: S, how many of that shape (0 .. kMaxSceneCount)
    std::string line;
    for (int64_t lineno = 1; std::getline(in, line); ++lineno) {
        if (line.empty()) continue;
        const std::string where = o.labels + ":" + std::to_string(lineno);
        nlohmann::json r;
        try {
            r = nlohmann::json::parse(line);
        } catch (const std::exception & e) {
            throw std::runtime_error(where + ": not JSON (" + e.what() + ")");
        }
        if (!r.contains("image") || !r.contains("grid") || !r.contains("objects"))
            throw std::runtime_error(where + ": expected keys image, grid, objects");
        if (r["grid"].get<int64_t>() != G)
            throw std::runtime_error(where + ": grid " + r["grid"].dump() + ", but the tower has " + std::to_string(G) +
                                     " x " + std::to_string(G) + " patches");
        std::vector<int64_t> s(T, S), c(T, C), z(T, Z);
        for (const auto & ob : r["objects"]) {
            const auto cell = ob.at("cell").get<std::vector<int64_t>>();
            if (cell.size() != 2 || cell[0] < 0 || cell[0] >= G || cell[1] < 0 || cell[1] >= G)
                throw std::runtime_error(where + ": cell " + ob.at("cell").dump() + " outside the " + std::to_string(G) + " x " +
                                         std::to_string(G) + " grid");
            const int64_t t = cell[1] * G + cell[0];
            s[t] = detail::index_of(shapes, ob.at("shape").get<std::string>(), where);
            c[t] = detail::index_of(colours, ob.at("colour").get<std::string>(), where);
            z[t] = detail::index_of(sizes, ob.at("size").get<std::string>(), where);
        }
        std::vector<float> present(S + C, 0.0f);
        std::vector<int64_t> count(S, 0);
        for (int64_t t = 0; t < T; ++t)
            if (s[t] < S) present[s[t]] = 1.0f, present[S + c[t]] = 1.0f, count[s[t]] = std::min<int64_t>(count[s[t]] + 1, kMaxSceneCount);
        y_present.insert(y_present.end(), present.begin(), present.end());
        y_count.insert(y_count.end(), count.begin(), count.end());
        y_shape.insert(y_shape.end(), s.begin(), s.end());
        y_colour.insert(y_colour.end(), c.begin(), c.end());
        y_size.insert(y_size.end(), z.begin(), z.end());
        pixels.push_back(data::preprocess_image(data::decode_image_file((fs::path(root) / r["image"].get<std::string>()).string()), proc));
    }
    const int64_t N = static_cast<int64_t>(pixels.size());
    const int64_t n_hold = static_cast<int64_t>(static_cast<double>(N) * o.holdout), n_train = N - n_hold;
    if (n_train < 1 || n_hold < 1) throw std::runtime_error(o.labels + ": " + std::to_string(N) + " images; need at least 2");
    const torch::Tensor X_NCHW = torch::stack(pixels);
    const torch::Tensor ys_NT = torch::tensor(y_shape).view({N, T}), yc_NT = torch::tensor(y_colour).view({N, T}),
                        yz_NT = torch::tensor(y_size).view({N, T});
    const torch::Tensor yp_NP = torch::tensor(y_present).view({N, S + C}), yn_NS = torch::tensor(y_count).view({N, S});

    // ---- the run: one linear head over the selected layer's patch tokens, three cross-entropies ----
    if (o.scene && o.scene_dims >= tower->hidden_size())
        throw std::runtime_error("--pretrain-scene-dims must be below the tower width " + std::to_string(tower->hidden_size()));
    torch::AutoGradMode grad(true);
    torch::manual_seed(o.seed);
    for (auto & p : tower->parameters()) p.set_requires_grad(true);
    const int64_t K_cell = (S + 1) + (C + 1) + (Z + 1) + (o.position ? 2 * G : 0);
    const int64_t K_scene = o.scene ? (S + C) + S * (kMaxSceneCount + 1) : 0;
    const int64_t D = tower->hidden_size(), K = K_cell + K_scene;
    const int64_t Ds = o.scene && o.scene_dims > 0 ? o.scene_dims : 0;
    // The split heads are made only when asked: drawing their init would move the batches' random stream.
    torch::nn::Linear head{nullptr}, cell_head{nullptr}, scene_head{nullptr};
    if (Ds == 0) head = torch::nn::Linear(D, K);
    else cell_head = torch::nn::Linear(D - Ds, K_cell), scene_head = torch::nn::Linear(Ds, K_scene);
    // One head over all widths, or (scene_dims) a cell head over widths [Ds, D) and a scene head over [0, Ds).
    auto heads = [&](const torch::Tensor & f_BtD) {
        if (Ds == 0) return head(f_BtD);
        return torch::cat({cell_head(f_BtD.slice(2, Ds)), scene_head(f_BtD.slice(2, 0, Ds))}, 2);
    };
    std::vector<torch::Tensor> params = tower->parameters();
    for (auto & p : (Ds == 0 ? head : cell_head)->parameters()) params.push_back(p);
    if (Ds > 0)
        for (auto & p : scene_head->parameters()) params.push_back(p);
    torch::optim::Adam opt(params, torch::optim::AdamOptions(o.lr));
    // heads, in order: shape, colour, size, then with `position` column and row; the logits of head h are
    // [edge[h], edge[h + 1]). Accuracy is reported for the first four (the row's equals the column's in kind).
    const size_t n_heads = o.position ? 5 : 3;
    const std::array<int64_t, 6> edge = {0, S + 1, S + C + 2, S + C + Z + 3, S + C + Z + 3 + G, S + C + Z + 3 + 2 * G};
    const torch::Tensor column_T = torch::arange(T, torch::kLong).remainder(G), row_T = torch::arange(T, torch::kLong).div(G, "floor");
    auto losses = [&](const torch::Tensor & idx_B, std::array<double, 4> * acc, std::array<double, 4> * scene_acc, bool with_scene) {
        const int64_t B = idx_B.size(0);
        const bool cls = o.scene && o.scene_on_cls;
        const torch::Tensor all_BtK = heads(tower->features(X_NCHW.index_select(0, idx_B), o.select_layer, cls ? "cls_patch" : "patch"));
        const torch::Tensor logits_BTK = cls ? all_BtK.slice(1, 1) : all_BtK;     // the T cell tokens
        const torch::Tensor scene_BtK = cls ? all_BtK.slice(1, 0, 1) : all_BtK;   // where the scene heads read
        const int64_t Ts = scene_BtK.size(1);
        const std::vector<torch::Tensor> y = {ys_NT.index_select(0, idx_B), yc_NT.index_select(0, idx_B),
                                              yz_NT.index_select(0, idx_B), column_T.expand({B, T}), row_T.expand({B, T})};
        torch::Tensor loss = torch::zeros({});
        const torch::Tensor object_BT = y[0] < S;
        for (size_t h = 0; h < n_heads; ++h) {
            const torch::Tensor l_BTk = logits_BTK.slice(2, edge[h], edge[h + 1]);
            loss = loss + torch::nn::functional::cross_entropy(l_BTk.reshape({B * T, -1}), y[h].reshape({-1}));
            if (acc && h < acc->size()) {
                const torch::Tensor hit_BT = (l_BTk.argmax(2) == y[h]).to(torch::kFloat);
                (*acc)[h] = hit_BT.masked_select(object_BT).mean().item<double>();
            }
        }
        if (o.scene && with_scene) {  // every token says what the whole image holds: logits [K_cell, K)
            namespace F = torch::nn::functional;
            // Which tokens carry the scene: all (or CLS), or with scene_on_objects the object tokens only.
            const torch::Tensor w_Bt = o.scene_on_objects && !cls ? object_BT.to(torch::kFloat) : torch::ones({B, Ts});
            const auto on_carriers = [&](const torch::Tensor & x_Bt) { return (x_Bt * w_Bt).sum() / w_Bt.sum(); };
            const torch::Tensor present_BTP = scene_BtK.slice(2, K_cell, K_cell + S + C);
            const torch::Tensor y_BTP = yp_NP.index_select(0, idx_B).unsqueeze(1).expand_as(present_BTP);
            const auto none = F::BinaryCrossEntropyWithLogitsFuncOptions().reduction(torch::kNone);
            loss = loss + on_carriers(F::binary_cross_entropy_with_logits(present_BTP, y_BTP, none).mean(2)) * (S + C) * o.scene_weight;
            const torch::Tensor count_BTSk = scene_BtK.slice(2, K_cell + S + C, K).reshape({B, Ts, S, kMaxSceneCount + 1});
            const torch::Tensor yn_BTS = yn_NS.index_select(0, idx_B).unsqueeze(1).expand({B, Ts, S});
            const torch::Tensor count_ce_BTS = F::cross_entropy(count_BTSk.reshape({-1, kMaxSceneCount + 1}), yn_BTS.reshape({-1}),
                                                                F::CrossEntropyFuncOptions().reduction(torch::kNone)).reshape({B, Ts, S});
            if (o.scene_counts) loss = loss + on_carriers(count_ce_BTS.mean(2)) * S * o.scene_weight;
            if (scene_acc) {
                const auto rate = [&](const torch::Tensor & hit_BtX) { return on_carriers(hit_BtX.to(torch::kFloat).mean(2)).item<double>(); };
                (*scene_acc)[0] = rate((present_BTP > 0).to(torch::kFloat) == y_BTP);
                (*scene_acc)[1] = o.scene_counts ? rate(count_BTSk.argmax(3) == yn_BTS) : 0.0;
                (*scene_acc)[2] = rate(y_BTP == 0);
                (*scene_acc)[3] = rate(yn_BTS == 0);
            }
        }
        return loss;
    };
    torch::Tensor loss;
    tower->train();
    for (int64_t step = 0; step < o.steps; ++step) {
        loss = losses(torch::randint(n_train, {o.batch}, torch::kLong), nullptr, nullptr, step >= o.scene_from);
        opt.zero_grad();
        loss.backward();
        opt.step();
    }
    tower->eval();
    for (auto & p : tower->parameters()) p.set_requires_grad(false);

    TowerPretrainReport rep;
    rep.train_images = n_train, rep.heldout_images = n_hold;
    rep.final_loss = loss.defined() ? loss.item<double>() : 0.0;
    std::array<double, 4> acc{};
    std::array<double, 4> scene_acc{};
    {
        torch::NoGradGuard ng;
        losses(torch::arange(n_train, N), &acc, &scene_acc, true);
    }
    rep.scene_presence = scene_acc[0], rep.scene_count = scene_acc[1];
    rep.scene_presence_floor = scene_acc[2], rep.scene_count_floor = scene_acc[3];
    rep.shape = acc[0], rep.colour = acc[1], rep.size = acc[2], rep.column = o.position ? acc[3] : 0.0;
    return rep;
}

}  // namespace idamoe::demo
