// LLaVA composition: parameter names, projector math, image-feature placement, labels and loss,
// count/width checks, projector checkpoints. Uses the tiny Qwen2 decoder (hidden 64) and the tiny
// CLIP / SigLIP towers (hidden 64) from tests/fixtures/hf.
#include "io/safetensors.h"
#include "model/llava.h"
#include "model/mlp.h"
#include "test_utils.h"

#include <catch2/catch.hpp>

#include <cmath>
#include <cstdio>

using namespace idamoe;
using idamoe::test::fixture_path;
using idamoe::test::TempDir;

namespace {

model::LlavaBuildOptions tiny_options(const std::string & vision = "clip_vision") {
    model::LlavaBuildOptions o;
    o.llm_dir = fixture_path("hf/qwen2");
    o.vision_dir = vision.empty() ? "" : fixture_path("hf/" + vision);
    o.projector_seed = 7;
    return o;
}

double max_abs_diff(const torch::Tensor & a, const torch::Tensor & b) {
    return (a.to(torch::kFloat64) - b.to(torch::kFloat64)).abs().max().item<double>();
}

constexpr int64_t IMG = model::kImageTokenId;

// Two samples, three images (N = 9 for the tiny CLIP): sample 0 = 2 text, image, 3 text (then
// padding); sample 1 = image, 1 text, image, 1 text.
struct Batch {
    torch::Tensor ids, mask, labels, images;
};

Batch make_batch(int64_t N, int64_t image_px) {
    std::vector<int64_t> s0 = {5, 17};
    for (int64_t i = 0; i < N; ++i) s0.push_back(IMG);
    for (int64_t t : {33, 101, 250}) s0.push_back(t);
    std::vector<int64_t> s1;
    for (int64_t i = 0; i < N; ++i) s1.push_back(IMG);
    s1.push_back(42);
    for (int64_t i = 0; i < N; ++i) s1.push_back(IMG);
    s1.push_back(77);
    const int64_t T = static_cast<int64_t>(std::max(s0.size(), s1.size()));
    Batch b;
    b.ids = torch::zeros({2, T}, torch::kInt64);
    b.mask = torch::zeros({2, T}, torch::kInt64);
    for (size_t t = 0; t < s0.size(); ++t) b.ids[0][t] = s0[t], b.mask[0][t] = 1;
    for (size_t t = 0; t < s1.size(); ++t) b.ids[1][t] = s1[t], b.mask[1][t] = 1;
    // Labels as a careless pipeline might write them: a copy of input_ids (so -200 on image
    // positions), -100 on padding. The model must ignore the image positions anyway.
    b.labels = b.ids.masked_fill(b.mask == 0, model::kIgnoreIndex);
    torch::manual_seed(3);
    b.images = torch::randn({3, 3, image_px, image_px});
    return b;
}

}  // namespace

TEST_CASE("llava: parameter names are LLaVA checkpoint keys, the tower is frozen and not registered", "[llava]") {
    model::LlavaModel m = model::build_llava(tiny_options());
    auto names = m->named_parameters();
    auto llm_names = m->llm()->named_parameters();
    // Every decoder key is there unchanged, plus exactly the four projector keys.
    for (const auto & item : llm_names) CHECK(names.contains(item.key()));
    CHECK(names.size() == llm_names.size() + 4);
    for (const char * k : {"model.mm_projector.0.weight", "model.mm_projector.0.bias", "model.mm_projector.2.weight",
                           "model.mm_projector.2.bias"})
        CHECK(names.contains(k));
    CHECK(names.contains("model.embed_tokens.weight"));
    CHECK(names.contains("model.layers.0.self_attn.q_proj.weight"));
    for (const auto & item : names) CHECK(item.key().find("vision") == std::string::npos);
    CHECK(names["model.mm_projector.0.weight"].sizes() == torch::IntArrayRef({64, 64}));
    // Shared, not copied: the LlavaModel's tensor is the decoder's tensor.
    CHECK(names["model.embed_tokens.weight"].data_ptr() == llm_names["model.embed_tokens.weight"].data_ptr());

    for (const auto & p : m->vision_tower()->parameters()) CHECK_FALSE(p.requires_grad());
    m->train();
    CHECK(m->is_training());
    CHECK(m->llm()->is_training());
    CHECK_FALSE(m->vision_tower()->is_training());

    model::LlavaModel linear = [] {
        auto o = tiny_options("siglip_vision");
        o.projector_type = "linear";
        return model::build_llava(o);
    }();
    CHECK(linear->named_parameters().contains("model.mm_projector.weight"));
    CHECK(linear->named_parameters().contains("model.mm_projector.bias"));
    CHECK(linear->num_image_tokens() == 16);  // SigLIP 56 px / 14: 4x4 patches, no CLS, all kept
}

TEST_CASE("llava: mlp2x_gelu projector equals a hand computation, init is seeded", "[llava]") {
    model::LlavaModel m = model::build_llava(tiny_options());
    auto & proj = m->projector();
    torch::manual_seed(11);
    torch::Tensor x = torch::randn({2, 5, 64});
    torch::Tensor got = proj(x);
    auto p = proj->named_parameters();
    torch::Tensor xd = x.to(torch::kFloat64);
    torch::Tensor h = torch::matmul(xd, p["0.weight"].to(torch::kFloat64).t()) + p["0.bias"].to(torch::kFloat64);
    h = 0.5 * h * (1 + torch::erf(h / std::sqrt(2.0)));  // erf GELU, nn.GELU() default
    torch::Tensor want = torch::matmul(h, p["2.weight"].to(torch::kFloat64).t()) + p["2.bias"].to(torch::kFloat64);
    const double err = max_abs_diff(got, want);
    std::printf("[llava] projector vs double-precision hand computation: max abs err %.3g (max |ref| %.3g)\n", err,
                want.abs().max().item<double>());
    CHECK(err < 1e-5);

    model::LlavaModel same = model::build_llava(tiny_options());
    auto other_opts = tiny_options();
    other_opts.projector_seed = 8;
    model::LlavaModel other = model::build_llava(other_opts);
    CHECK(torch::equal(same->projector()->fc0->weight, proj->fc0->weight));
    CHECK_FALSE(torch::equal(other->projector()->fc0->weight, proj->fc0->weight));
    const double bound = 1.0 / std::sqrt(64.0);  // nn.Linear default init bound 1/sqrt(fan_in)
    CHECK(proj->fc0->weight.abs().max().item<double>() <= bound);
}

TEST_CASE("llava: image features land at the placeholder positions, text elsewhere", "[llava]") {
    model::LlavaModel m = model::build_llava(tiny_options());
    m->eval();
    const int64_t N = m->num_image_tokens();
    REQUIRE(N == 9);  // CLIP 42 px / 14 = 3x3 patches, CLS dropped ("patch")
    Batch b = make_batch(N, 42);
    torch::NoGradGuard ng;
    torch::Tensor x = m->prepare_embeds(b.ids, b.images);
    REQUIRE(x.sizes() == torch::IntArrayRef({2, b.ids.size(1), 64}));
    torch::Tensor img = m->image_embeds(b.images);
    REQUIRE(img.sizes() == torch::IntArrayRef({3, N, 64}));
    // The image embeddings are the projector applied to the tower's layer -2 patch features.
    torch::Tensor feats = m->vision_tower()->hidden_states(b.images, -2).back().slice(1, 1);
    CHECK(max_abs_diff(img, m->projector()(feats)) == 0.0);

    torch::Tensor emb = m->llm()->named_parameters()["model.embed_tokens.weight"];
    // sample 0: positions 2..2+N-1 = image 0; sample 1: 0..N-1 = image 1, N+1..2N = image 2
    CHECK(max_abs_diff(x[0].slice(0, 2, 2 + N), img[0]) == 0.0);
    CHECK(max_abs_diff(x[1].slice(0, 0, N), img[1]) == 0.0);
    CHECK(max_abs_diff(x[1].slice(0, N + 1, 2 * N + 1), img[2]) == 0.0);
    CHECK(max_abs_diff(x[0][0], emb[5]) == 0.0);
    CHECK(max_abs_diff(x[0][2 + N], emb[33]) == 0.0);
    CHECK(max_abs_diff(x[1][N], emb[42]) == 0.0);
    CHECK(max_abs_diff(x[1][2 * N + 1], emb[77]) == 0.0);
}

TEST_CASE("llava: forward = decoder on spliced embeddings, loss ignores image positions", "[llava]") {
    model::LlavaModel m = model::build_llava(tiny_options());
    m->eval();
    const int64_t N = m->num_image_tokens();
    Batch b = make_batch(N, 42);
    model::LlavaOutput out = m->forward(b.ids, b.mask, b.images, b.labels);
    torch::Tensor embeds = m->prepare_embeds(b.ids, b.images);
    torch::Tensor logits = m->llm()->forward_embeds(embeds, b.mask).logits_BTV;
    CHECK(out.logits_BTV.sizes() == torch::IntArrayRef({2, b.ids.size(1), 512}));
    CHECK(max_abs_diff(out.logits_BTV, logits) == 0.0);

    // Hand loss: shifted CE over targets that are text tokens (not -100, not image placeholders).
    torch::Tensor lg = out.logits_BTV.detach().to(torch::kFloat64);
    double sum = 0;
    int64_t count = 0;
    for (int64_t s = 0; s < 2; ++s)
        for (int64_t t = 0; t + 1 < b.ids.size(1); ++t) {
            const int64_t y = b.labels[s][t + 1].item<int64_t>();
            if (y < 0) continue;  // -100 padding and -200 image placeholders carry no target
            sum += -torch::log_softmax(lg[s][t], -1)[y].item<double>();
            ++count;
        }
    CHECK(count == 6);  // sample 0: 17, 33, 101, 250; sample 1: 42, 77
    const double want = sum / count;
    std::printf("[llava] loss %.6f, hand CE over %lld text targets %.6f\n", out.loss.item<double>(),
                static_cast<long long>(count), want);
    CHECK(std::abs(out.loss.item<double>() - want) < 1e-5);

    // Labels already -100 on image positions give the same loss.
    torch::Tensor clean = b.labels.masked_fill(b.ids == IMG, model::kIgnoreIndex);
    CHECK(m->forward(b.ids, b.mask, b.images, clean).loss.item<double>() == out.loss.item<double>());

    // Gradients reach the projector and the decoder, never the frozen tower.
    m->train();
    m->zero_grad();
    m->forward(b.ids, b.mask, b.images, b.labels).loss.backward();
    CHECK(m->projector()->fc0->weight.grad().defined());
    CHECK(m->projector()->fc0->weight.grad().abs().sum().item<double>() > 0);
    for (const auto & p : m->vision_tower()->parameters()) CHECK_FALSE(p.grad().defined());

    // A text-only batch still gives the projector a (zero) gradient, so all ranks reduce the same set.
    m->zero_grad();
    torch::Tensor text_ids = b.ids.masked_fill(b.ids == IMG, 3);
    m->forward(text_ids, b.mask, {}, text_ids).loss.backward();
    for (const auto & p : m->projector()->parameters()) {
        REQUIRE(p.grad().defined());
        CHECK(p.grad().abs().max().item<double>() == 0.0);
    }
}

TEST_CASE("llava: placeholder/image count and width mismatches are clear errors", "[llava]") {
    model::LlavaModel m = model::build_llava(tiny_options());
    const int64_t N = m->num_image_tokens();
    Batch b = make_batch(N, 42);
    torch::NoGradGuard ng;
    CHECK_THROWS_WITH(m->prepare_embeds(b.ids, b.images.slice(0, 0, 2)),
                      Catch::Contains("18 placeholders expected") && Catch::Contains("hold 27"));
    CHECK_THROWS_WITH(m->prepare_embeds(b.ids, torch::Tensor()), Catch::Contains("no images were given"));
    torch::Tensor cut = b.ids.clone();
    cut[0][2] = 9;      // image 0 loses one placeholder...
    cut[0][2 + N] = IMG;  // ...and gains one after its end: the total still matches, the run does too
    CHECK_NOTHROW(m->prepare_embeds(cut, b.images));
    torch::Tensor broken = b.ids.clone();
    broken[1][0] = 9;            // image 1 keeps only N-1 placeholders...
    broken[1][2 * N + 1] = IMG;  // ...image 2 gets N+1: total unchanged, runs broken
    CHECK_THROWS_WITH(m->prepare_embeds(broken, b.images), Catch::Contains("not a multiple of 9"));

    model::LlavaModel text_only = model::build_llava(tiny_options(""));
    CHECK(text_only->num_image_tokens() == 0);
    CHECK(text_only->named_parameters().size() == text_only->llm()->named_parameters().size());
    CHECK_THROWS_WITH(text_only->prepare_embeds(b.ids, b.images), Catch::Contains("text-only"));
    // Without images the model is exactly the decoder.
    torch::Tensor text_ids = b.ids.masked_fill(b.ids == IMG, 3);
    CHECK(max_abs_diff(text_only->forward(text_ids, b.mask, {}).logits_BTV,
                       text_only->llm()->forward(text_ids, b.mask).logits_BTV) == 0.0);
    CHECK(max_abs_diff(m->forward(text_ids, b.mask, {}).logits_BTV, m->llm()->forward(text_ids, b.mask).logits_BTV) == 0.0);

    // select_layer / select_feature are checked when the model is put together, not mid-training.
    CHECK_THROWS_WITH(model::LlavaModel(m->llm(), m->vision_tower(), m->projector(), -4, "patch"),
                      Catch::Contains("select_layer -4 out of range"));
    CHECK_THROWS_WITH(model::LlavaModel(m->llm(), m->vision_tower(), m->projector(), -2, "cls"),
                      Catch::Contains("select_feature"));

    // A projector made for another width: the error names both config files.
    model::ProjectorConfig pc;
    pc.d_vision = 32;
    pc.d_model = 64;
    CHECK_THROWS_WITH(model::LlavaModel(m->llm(), m->vision_tower(), model::Projector(pc), -2, "patch",
                                        fixture_path("hf/qwen2/config.json")),
                      Catch::Contains("clip_vision/config.json") && Catch::Contains("qwen2/config.json"));
}

TEST_CASE("llava: projector checkpoints (LLaVA and MoE-LLaVA key styles) load strictly", "[llava]") {
    model::LlavaModel m = model::build_llava(tiny_options());
    TempDir d;
    io::TensorMap llava_keys, moe_keys;
    torch::manual_seed(5);
    for (const char * k : {"0.weight", "2.weight"}) {
        llava_keys[std::string("model.mm_projector.") + k] = torch::randn({64, 64});
        moe_keys[std::string("model.mm_projector.image_spatial_proj.") + k] = torch::randn({64, 64});
    }
    for (const char * k : {"0.bias", "2.bias"}) {
        llava_keys[std::string("model.mm_projector.") + k] = torch::randn({64});
        moe_keys[std::string("model.mm_projector.image_spatial_proj.") + k] = torch::randn({64});
    }
    io::save_safetensors(d.str("llava.safetensors"), llava_keys);
    io::save_safetensors(d.str("moe.safetensors"), moe_keys);

    auto o = tiny_options();
    o.projector_checkpoint = d.str("llava.safetensors");
    model::LlavaModel a = model::build_llava(o);
    CHECK(torch::equal(a->named_parameters()["model.mm_projector.2.weight"], llava_keys["model.mm_projector.2.weight"]));
    o.projector_checkpoint = d.str("moe.safetensors");
    model::LlavaModel c = model::build_llava(o);
    CHECK(torch::equal(c->named_parameters()["model.mm_projector.0.bias"],
                       moe_keys["model.mm_projector.image_spatial_proj.0.bias"]));

    // A projector trained for a 1152-wide SigLIP does not fit the 64-wide CLIP tower.
    io::TensorMap wide = llava_keys;
    wide["model.mm_projector.0.weight"] = torch::randn({64, 1152});
    io::save_safetensors(d.str("wide.safetensors"), wide);
    o.projector_checkpoint = d.str("wide.safetensors");
    CHECK_THROWS_WITH(model::build_llava(o), Catch::Contains("wide.safetensors") && Catch::Contains("1152") &&
                                                 Catch::Contains("clip_vision/config.json"));
}

TEST_CASE("llava: FFN swaps in the decoder show through, to(dtype) reaches tower, projector and decoder", "[llava]") {
    model::LlavaModel m = model::build_llava(tiny_options("siglip_vision"));
    // What the MoE code does to upcycle a layer: the LlavaModel shares the decoder's layer objects.
    m->llm()->set_ffn(1, std::make_shared<model::SwiGluMlpImpl>(64, 32));
    auto names = m->named_parameters();
    REQUIRE(names.contains("model.layers.1.mlp.gate_proj.weight"));
    CHECK(names["model.layers.1.mlp.gate_proj.weight"].sizes() == torch::IntArrayRef({32, 64}));
    CHECK(names["model.layers.0.mlp.gate_proj.weight"].sizes() == torch::IntArrayRef({128, 64}));

    m->to(torch::kFloat64);
    CHECK(m->vision_tower()->vision_model->post_layernorm->weight.scalar_type() == torch::kFloat64);
    CHECK(m->projector()->fc2->bias.scalar_type() == torch::kFloat64);
    CHECK(m->llm()->named_parameters()["model.norm.weight"].scalar_type() == torch::kFloat64);
    for (const auto & item : m->named_parameters()) CHECK(item.value().scalar_type() == torch::kFloat64);
}
