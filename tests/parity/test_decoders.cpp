// Qwen2 / StableLM decoders against the Hugging Face reference fixtures (tests/fixtures/hf/*,
// produced by transformers 4.45 in float32; README section 1). Tolerances per the fixture README:
// atol = 1e-4 * max|ref|, rtol = 1e-4 for tensors, 1e-5 for the loss, exact greedy ids.
#include "io/hf_loader.h"
#include "io/safetensors.h"
#include "model/decoder.h"
#include "model/generate.h"
#include "model/mlp.h"
#include "model/rope.h"
#include "test_utils.h"
#include "tolerance.h"

#include <catch2/catch.hpp>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sys/wait.h>

using namespace idamoe;
using idamoe::test::close_to_ref;
using idamoe::test::fixture_path;
using idamoe::test::read_file;
using idamoe::test::TempDir;

namespace {

struct Fixture {
    std::string dir;
    model::CausalLM lm{nullptr};
    io::TensorMap in, out;
};

Fixture load_fixture(const std::string & name) {
    Fixture f;
    f.dir = fixture_path("hf/" + name);
    f.lm = io::load_causal_lm(f.dir);
    f.in = io::load_safetensors(f.dir + "/inputs.safetensors");
    f.out = io::load_safetensors(f.dir + "/outputs.safetensors");
    return f;
}

const char * kModels[] = {"qwen2", "stablelm"};

}  // namespace

TEST_CASE("decoders: logits and hidden states match HF", "[parity][decoder]") {
    for (const char * name : kModels) {
        SECTION(name) {
            auto f = load_fixture(name);
            f.lm->eval();
            torch::NoGradGuard ng;
            auto o = f.lm->forward(f.in.at("input_ids"), torch::Tensor(), true);
            CHECK(close_to_ref(o.logits_BTV, f.out.at("logits"), std::string(name) + " logits"));
            REQUIRE(o.hidden_states.size() == static_cast<size_t>(f.lm->n_layer() + 1));
            for (size_t i = 0; i < o.hidden_states.size(); ++i)
                CHECK(close_to_ref(o.hidden_states[i], f.out.at("hidden_states." + std::to_string(i)),
                                   std::string(name) + " hidden_states." + std::to_string(i)));
            CHECK(close_to_ref(o.hidden_states.back(), f.out.at("last_hidden_state"), std::string(name) + " last_hidden_state"));
        }
    }
}

TEST_CASE("decoders: loss and gradients match HF, with and without checkpointing", "[parity][decoder]") {
    for (const char * name : kModels) {
        SECTION(name) {
            auto f = load_fixture(name);
            const auto & labels = f.in.at("labels");
            std::map<std::string, torch::Tensor> plain;
            for (bool ckpt : {false, true}) {
                f.lm->train();
                f.lm->set_checkpointing(ckpt);
                f.lm->zero_grad();
                auto o = f.lm->forward(f.in.at("input_ids"), torch::Tensor());
                auto loss = model::causal_lm_loss(o.logits_BTV, labels);
                const double ref = f.out.at("loss").item<double>();
                std::printf("  %s loss %.7f ref %.7f abs err %.3g (checkpointing %d)\n", name, loss.item<double>(), ref,
                            std::abs(loss.item<double>() - ref), int(ckpt));
                CHECK(std::abs(loss.item<double>() - ref) <= 1e-5);
                CHECK(model::causal_lm_loss_sum(o.logits_BTV, labels).count == 8);  // manifest loss_num_targets
                loss.backward();
                auto params = f.lm->named_parameters();
                for (const auto & [key, ref_grad] : f.out) {
                    if (key.rfind("grad.", 0) != 0) continue;
                    const std::string p = key.substr(5);
                    REQUIRE(params.contains(p));
                    CHECK(close_to_ref(params[p].grad(), ref_grad, std::string(name) + " " + key + (ckpt ? " [ckpt]" : "")));
                }
                for (const auto & p : params) {
                    INFO(p.key());
                    REQUIRE(p.value().grad().defined());
                    if (!ckpt) plain[p.key()] = p.value().grad().clone();
                    else  // same ops recomputed: equal up to summation order in accumulation
                        CHECK(torch::allclose(p.value().grad(), plain[p.key()], 1e-6, 1e-7));
                }
            }
        }
    }
}

TEST_CASE("decoders: greedy KV-cache generation matches HF", "[parity][decoder]") {
    for (const char * name : kModels) {
        SECTION(name) {
            auto f = load_fixture(name);
            f.lm->eval();
            auto g = model::greedy_generate(f.lm, f.in.at("input_ids"), torch::Tensor(), 6, /*want_next_logits=*/true);
            INFO(g.ids_BN);
            CHECK(torch::equal(g.ids_BN, f.out.at("greedy_ids")));
            CHECK(torch::equal(g.mask_BN, torch::ones_like(g.ids_BN)));
            CHECK(close_to_ref(g.next_logits_BV.unsqueeze(1), f.out.at("cached_step_logits"),
                               std::string(name) + " cached_step_logits"));
            // The cache path equals a full no-cache forward over the generated sequence.
            torch::NoGradGuard ng;
            auto full = f.lm->forward(g.ids_BN, torch::Tensor()).logits_BTV.select(1, -1);
            CHECK(close_to_ref(g.next_logits_BV, full, std::string(name) + " cache vs full forward"));
        }
    }
}

TEST_CASE("decoders: a right-padded batch equals each row run alone", "[parity][decoder]") {
    for (const char * name : kModels) {
        SECTION(name) {
            auto f = load_fixture(name);
            f.lm->eval();
            const auto ids = f.in.at("input_ids");  // [1, 11]
            const int64_t T = ids.size(1), L1 = 7;
            // Row 0: the fixture; row 1: its first 7 tokens, then padding with a garbage id.
            auto batch = torch::cat({ids, torch::cat({ids.narrow(1, 0, L1), torch::full({1, T - L1}, 5, torch::kInt64)}, 1)});
            auto mask = torch::ones({2, T}, torch::kInt64);
            mask[1].narrow(0, L1, T - L1).fill_(0);
            auto labels = batch.clone();
            labels[0].copy_(f.in.at("labels")[0]);
            labels[1].narrow(0, L1, T - L1).fill_(-100);
            labels[1][0] = -100;

            torch::Tensor loss_b, sum0, sum1;
            {
                torch::NoGradGuard ng;
                auto ob = f.lm->forward(batch, mask, true);
                auto o1 = f.lm->forward(ids.narrow(1, 0, L1), torch::Tensor(), true);
                CHECK(close_to_ref(ob.logits_BTV[0], f.out.at("logits")[0], std::string(name) + " padded row 0 logits"));
                CHECK(close_to_ref(ob.logits_BTV[1].narrow(0, 0, L1), o1.logits_BTV[0],
                                   std::string(name) + " padded row 1 logits (real positions)"));
                for (size_t i = 0; i < ob.hidden_states.size(); ++i)
                    CHECK(close_to_ref(ob.hidden_states[i][1].narrow(0, 0, L1), o1.hidden_states[i][0],
                                       std::string(name) + " padded row 1 hidden_states." + std::to_string(i)));
                // Token-normalised loss: the batch mean is the pooled sum over the pooled count.
                auto sb = model::causal_lm_loss_sum(ob.logits_BTV, labels);
                auto s0 = model::causal_lm_loss_sum(ob.logits_BTV.narrow(0, 0, 1), labels.narrow(0, 0, 1));
                auto s1 = model::causal_lm_loss_sum(o1.logits_BTV, labels[1].narrow(0, 0, L1).unsqueeze(0));
                CHECK(sb.count == s0.count + s1.count);
                CHECK(s1.count == L1 - 1);
                CHECK(sb.sum.item<double>() == Approx(s0.sum.item<double>() + s1.sum.item<double>()).epsilon(1e-6));
                CHECK(model::causal_lm_loss(ob.logits_BTV, labels).item<double>() ==
                      Approx(sb.sum.item<double>() / static_cast<double>(sb.count)).epsilon(1e-6));
            }

            auto gb = model::greedy_generate(f.lm, batch, mask, 6);
            auto g1 = model::greedy_generate(f.lm, ids.narrow(1, 0, L1), torch::Tensor(), 6);
            REQUIRE(gb.ids_BN.sizes() == std::vector<int64_t>{2, T + 6});
            CHECK(torch::equal(gb.ids_BN[0], f.out.at("greedy_ids")[0]));
            CHECK(torch::equal(gb.ids_BN[1].narrow(0, 0, L1 + 6), g1.ids_BN[0]));
            CHECK(gb.ids_BN[1].narrow(0, L1 + 6, T - L1).eq(0).all().item<bool>());
            CHECK(gb.mask_BN[0].eq(1).all().item<bool>());
            CHECK(gb.mask_BN[1].sum().item<int64_t>() == L1 + 6);
            CHECK(gb.mask_BN[1].narrow(0, 0, L1 + 6).eq(1).all().item<bool>());
            // Left padding is refused rather than silently mis-positioned.
            auto left = mask.flip({1});
            CHECK_THROWS_WITH(model::greedy_generate(f.lm, batch, left, 2), Catch::Contains("right-padded"));
        }
    }
}

TEST_CASE("decoders: generation from embeddings stops at EOS per row", "[parity][decoder]") {
    auto f = load_fixture("stablelm");
    f.lm->eval();
    const auto ids = f.in.at("input_ids");
    auto ref = model::greedy_generate(f.lm, ids, torch::Tensor(), 6);
    const auto new_tokens = ref.ids_BN.narrow(1, ids.size(1), 6)[0];
    torch::NoGradGuard ng;
    auto emb = f.lm->embed(ids);
    auto g = model::greedy_generate_embeds(f.lm, emb, torch::Tensor(), 6);
    CHECK(torch::equal(g.ids_BN[0], new_tokens));
    // With the 3rd generated token as EOS: tokens up to and including it, then 0 with mask 0.
    const int64_t eos = new_tokens[2].item<int64_t>();
    int64_t first = 0;
    while (new_tokens[first].item<int64_t>() != eos) ++first;
    auto ge = model::greedy_generate_embeds(f.lm, emb, torch::Tensor(), 6, eos);
    CHECK(torch::equal(ge.ids_BN[0].narrow(0, 0, first + 1), new_tokens.narrow(0, 0, first + 1)));
    CHECK(ge.mask_BN[0].sum().item<int64_t>() == first + 1);
    CHECK(ge.ids_BN[0].narrow(0, first + 1, 5 - first).eq(0).all().item<bool>());
}

namespace {

// An FFN slot with an aux loss, to check that checkpointing keeps aux gradients.
struct AuxMlpImpl : model::FfnImpl {
    std::shared_ptr<model::SwiGluMlpImpl> inner;
    model::FfnAux last;
    explicit AuxMlpImpl(std::shared_ptr<model::SwiGluMlpImpl> m) : inner(register_module("inner", m)) {}
    torch::Tensor forward(const torch::Tensor & x, const torch::Tensor & mask) override {
        auto y = inner->forward(x, mask);
        last.loss = 0.1 * y.pow(2).mean();
        return y;
    }
    const model::FfnAux * aux() const override { return &last; }
};

}  // namespace

TEST_CASE("decoders: FFN slots can be swapped, checkpointing keeps aux-loss and frozen-input gradients", "[parity][decoder]") {
    auto f = load_fixture("qwen2");
    auto ids = f.in.at("input_ids");
    auto labels = f.in.at("labels");
    {
        torch::NoGradGuard ng;
        auto before = f.lm->forward(ids, torch::Tensor()).logits_BTV;
        auto dense = std::dynamic_pointer_cast<model::SwiGluMlpImpl>(f.lm->ffn(1));
        REQUIRE(dense);
        f.lm->set_ffn(1, std::make_shared<AuxMlpImpl>(dense));
        CHECK(f.lm->named_parameters().contains("model.layers.1.mlp.inner.down_proj.weight"));
        CHECK_FALSE(f.lm->named_parameters().contains("model.layers.1.mlp.down_proj.weight"));
        auto after = f.lm->forward(ids, torch::Tensor());
        CHECK(torch::equal(after.logits_BTV, before));  // same weights, same output
        REQUIRE(after.aux_loss.defined());
    }
    f.lm->model->embed_tokens->weight.set_requires_grad(false);  // frozen input: the layer input needs no grad
    f.lm->train();
    std::map<std::string, torch::Tensor> plain;
    for (bool ckpt : {false, true}) {
        f.lm->set_checkpointing(ckpt);
        f.lm->zero_grad();
        auto o = f.lm->forward(ids, torch::Tensor());
        REQUIRE(o.aux_loss.defined());
        auto total = model::causal_lm_loss(o.logits_BTV, labels) + o.aux_loss;
        total.backward();
        for (const auto & p : f.lm->named_parameters()) {
            if (!p.value().requires_grad()) continue;
            INFO(p.key() << " checkpointing " << ckpt);
            REQUIRE(p.value().grad().defined());
            if (!ckpt) plain[p.key()] = p.value().grad().clone();
            else CHECK(torch::allclose(p.value().grad(), plain[p.key()], 1e-6, 1e-7));
        }
    }
    CHECK(plain.size() == f.lm->named_parameters().size() - 1);
}

TEST_CASE("rotary: partial rotate_half against a naive double-precision loop", "[parity][decoder]") {
    const int64_t B = 2, H = 3, T = 5, d = 16, r = 4;
    const double theta = 10000.0;
    auto x = torch::randn({B, H, T, d}, torch::kFloat64);
    auto pos = torch::tensor({{0, 1, 2, 3, 4}, {7, 8, 9, 10, 11}}, torch::kInt64);
    auto [cos, sin] = model::rope_cos_sin(pos, r, theta, torch::kFloat64);
    auto got = model::apply_rope(x, cos, sin);
    auto want = x.clone();
    auto xa = x.accessor<double, 4>();
    auto wa = want.accessor<double, 4>();
    for (int64_t b = 0; b < B; ++b)
        for (int64_t h = 0; h < H; ++h)
            for (int64_t t = 0; t < T; ++t)
                for (int64_t j = 0; j < r / 2; ++j) {  // pair (j, j + r/2) rotates by angle p * theta^(-2j/r)
                    const double ang = pos[b][t].item<double>() * std::pow(theta, -2.0 * j / r);
                    const double a = xa[b][h][t][j], c = xa[b][h][t][j + r / 2];
                    wa[b][h][t][j] = a * std::cos(ang) - c * std::sin(ang);
                    wa[b][h][t][j + r / 2] = c * std::cos(ang) + a * std::sin(ang);
                }
    // cos/sin come from fp32 tables like HF, so agreement is to fp32 precision.
    CHECK(close_to_ref(got, want, "rope partial (r=4 of 16)", 1e-6, 1e-6));
    CHECK(torch::equal(got.narrow(-1, r, d - r), x.narrow(-1, r, d - r)));
}

TEST_CASE("decoder config: HF spellings, clear errors, parameter counts", "[parity][decoder]") {
    // architectures.md §3.2 / §4.2 configs of the real checkpoints.
    const auto stablelm = nlohmann::json::parse(R"({"model_type": "stablelm", "vocab_size": 100352, "hidden_size": 2048,
        "intermediate_size": 5632, "num_hidden_layers": 24, "num_attention_heads": 32, "num_key_value_heads": 32,
        "hidden_act": "silu", "layer_norm_eps": 1e-5, "rope_theta": 10000, "partial_rotary_factor": 0.25,
        "use_qkv_bias": true, "tie_word_embeddings": false, "max_position_embeddings": 4096})");
    const auto qwen2 = nlohmann::json::parse(R"({"model_type": "qwen2", "vocab_size": 151936, "hidden_size": 1536,
        "intermediate_size": 8960, "num_hidden_layers": 28, "num_attention_heads": 12, "num_key_value_heads": 2,
        "hidden_act": "silu", "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "tie_word_embeddings": true,
        "use_sliding_window": false, "sliding_window": 131072, "max_position_embeddings": 131072})");
    auto cs = model::decoder_config_from_json(stablelm, "stablelm-2-1_6b/config.json");
    auto cq = model::decoder_config_from_json(qwen2, "Qwen2-1.5B/config.json");
    CHECK(cs.rotary_dim() == 16);
    CHECK(cq.rotary_dim() == 128);
    CHECK(cq.kv_groups() == 6);
    CHECK(model::decoder_parameter_count(cs) == 1644515328LL);  // published StableLM-2-1.6B total
    CHECK(model::decoder_parameter_count(cq) == 1543714304LL);  // published Qwen2-1.5B total (tied)

    // The legacy stablelm_epoch spellings give the same config.
    auto epoch = stablelm;
    epoch["model_type"] = "stablelm_epoch";
    epoch.erase("layer_norm_eps");
    epoch.erase("partial_rotary_factor");
    epoch.erase("num_attention_heads");
    epoch["norm_eps"] = 1e-5;
    epoch["rope_pct"] = 0.25;
    epoch["num_heads"] = 32;
    auto ce = model::decoder_config_from_json(epoch, "epoch/config.json");
    CHECK(ce.model_type == "stablelm");
    CHECK(model::decoder_parameter_count(ce) == 1644515328LL);

    // The count function agrees with the instantiated modules of the tiny fixtures.
    for (const char * name : kModels) {
        auto c = model::decoder_config_from_json(fixture_path(std::string("hf/") + name));
        model::CausalLM lm(c);
        int64_t n = 0;
        for (const auto & p : lm->parameters()) n += p.numel();
        CHECK(n == model::decoder_parameter_count(c));
    }

    auto bad = qwen2;
    bad["model_type"] = "llama";
    CHECK_THROWS_WITH(model::decoder_config_from_json(bad, "/m/config.json"),
                      Catch::Contains("/m/config.json") && Catch::Contains("model_type 'llama'"));
    bad = stablelm;
    bad["qk_layernorm"] = true;
    CHECK_THROWS_WITH(model::decoder_config_from_json(bad, "x.json"), Catch::Contains("qk_layernorm"));
    bad = qwen2;
    bad["num_key_value_heads"] = 5;
    CHECK_THROWS_WITH(model::decoder_config_from_json(bad, "x.json"), Catch::Contains("num_key_value_heads 5"));
    TempDir d;
    CHECK_THROWS_WITH(model::decoder_config_from_json(d.str()), Catch::Contains("config.json") && Catch::Contains("cannot open"));
}

TEST_CASE("decoders: strict loading of HF checkpoints and their failure modes", "[parity][decoder]") {
    TempDir d;
    namespace fs = std::filesystem;
    auto copy_model = [&](const std::string & name, const std::string & to) {
        fs::create_directories(d.str(to));
        fs::copy_file(fixture_path("hf/" + name + "/config.json"), d.str(to + "/config.json"));
        return io::load_safetensors(fixture_path("hf/" + name + "/model.safetensors"));
    };
    // Tied Qwen2 with an lm_head.weight in the file: ignored, the embedding is the output matrix.
    auto st = copy_model("qwen2", "tied");
    st["lm_head.weight"] = torch::zeros({512, 64});
    io::save_safetensors(d.str("tied/model.safetensors"), st);
    auto lm = io::load_causal_lm(d.str("tied"));
    CHECK(torch::equal(lm->output_weight(), st.at("model.embed_tokens.weight")));

    // StableLM without lm_head, with a bf16 tensor and a wrong shape.
    st = copy_model("stablelm", "broken");
    st.erase("lm_head.weight");
    st["model.norm.weight"] = st["model.norm.weight"].to(torch::kBFloat16);
    st["model.layers.0.mlp.up_proj.weight"] = torch::zeros({64, 128});
    io::save_safetensors(d.str("broken/model.safetensors"), st);
    CHECK_THROWS_WITH(io::load_causal_lm(d.str("broken")),
                      Catch::Contains("broken/model.safetensors") && Catch::Contains("lm_head.weight") &&
                          Catch::Contains("model.layers.0.mlp.up_proj.weight: checkpoint [64, 128] vs model [128, 64]"));

    // bf16 file into an fp32 model, and an fp32 file into a bf16 model.
    st = copy_model("stablelm", "bf16");
    for (auto & [k, v] : st) v = v.to(torch::kBFloat16);
    io::save_safetensors(d.str("bf16/model.safetensors"), st);
    auto lm16 = io::load_causal_lm(d.str("bf16"));
    CHECK(lm16->output_weight().scalar_type() == torch::kFloat32);
    CHECK(torch::equal(lm16->output_weight(), st.at("lm_head.weight").to(torch::kFloat32)));
    auto lmb = io::load_causal_lm(fixture_path("hf/stablelm"), torch::kBFloat16);
    CHECK(lmb->output_weight().scalar_type() == torch::kBFloat16);
    torch::NoGradGuard ng;
    auto f = load_fixture("stablelm");
    auto logits_b = lmb->forward(f.in.at("input_ids"), torch::Tensor()).logits_BTV;
    CHECK(logits_b.scalar_type() == torch::kBFloat16);
    // bf16 has 8 mantissa bits: loose agreement only, as a sanity check of the dtype path.
    CHECK(close_to_ref(logits_b.to(torch::kFloat32), f.out.at("logits"), "stablelm bf16 logits (loose)", 0.1, 0.1));

    // Truncated checkpoint: one error naming the file.
    fs::create_directories(d.str("trunc"));
    fs::copy_file(fixture_path("hf/qwen2/config.json"), d.str("trunc/config.json"));
    fs::copy_file(fixture_path("hf/qwen2/model.safetensors"), d.str("trunc/model.safetensors"));
    fs::resize_file(d.str("trunc/model.safetensors"), fs::file_size(d.str("trunc/model.safetensors")) / 2);
    CHECK_THROWS_WITH(io::load_causal_lm(d.str("trunc")),
                      Catch::Contains("trunc/model.safetensors") && Catch::Contains("tensor '"));
}

namespace {

// Runs a command, returning its exit status; stderr goes to `err_file`.
int run_cmd(const std::string & cmd, const std::string & err_file) {
    const int rc = std::system((cmd + " 2> " + err_file).c_str());
    return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

}  // namespace

TEST_CASE("idamoe-forward: end to end on the LM fixtures", "[parity][decoder][cli]") {
    const std::string bin = idamoe::test::binary_path("idamoe-forward");
    REQUIRE(std::filesystem::exists(bin));
    TempDir d;
    for (const char * name : kModels) {
        SECTION(name) {
            const std::string dir = fixture_path(std::string("hf/") + name);
            const std::string out = d.str("out.safetensors");
            const int rc = run_cmd(bin + " --model " + dir + " --inputs " + dir + "/inputs.safetensors --out " + out +
                                       " --generate 6 --grad model.embed_tokens.weight"
                                       " --grad model.layers.0.self_attn.q_proj.weight"
                                       " --grad model.layers.1.mlp.down_proj.weight",
                                   d.str("err.txt"));
            INFO(read_file(d.str("err.txt")));
            REQUIRE(rc == 0);
            auto got = io::load_safetensors(out);
            auto ref = io::load_safetensors(dir + "/outputs.safetensors");
            for (const auto & [key, r] : ref) {
                INFO(key);
                REQUIRE(got.count(key));
                if (key == "greedy_ids") CHECK(torch::equal(got.at(key), r));
                else if (key == "loss") CHECK(std::abs(got.at(key).item<double>() - r.item<double>()) <= 1e-5);
                else CHECK(close_to_ref(got.at(key), r, std::string("cli ") + name + " " + key));
            }
            CHECK(torch::equal(got.at("greedy_attention_mask"), torch::ones({1, 17}, torch::kInt64)));
        }
    }
    SECTION("bad inputs give one clear error and a non-zero exit") {
        const std::string q = fixture_path("hf/qwen2");
        const std::string in = q + "/inputs.safetensors";
        auto run = [&](const std::string & args) {
            const int rc = run_cmd(bin + " " + args, d.str("err.txt"));
            return std::make_pair(rc, read_file(d.str("err.txt")));
        };
        auto [rc1, e1] = run("--model " + fixture_path("hf/clip_vision") + " --inputs " + in + " --out " + d.str("o"));
        CHECK(rc1 == 1);
        CHECK_THAT(e1, Catch::Contains("inputs.safetensors") && Catch::Contains("no tensor 'pixel_values'"));  // a vision tower
        auto [rc2, e2] = run("--model " + q + " --inputs " + in + " --out " + d.str("o") + " --grad model.nope");
        CHECK(rc2 == 1);
        CHECK_THAT(e2, Catch::Contains("--grad model.nope"));
        std::filesystem::create_directories(d.str("m"));
        std::filesystem::copy_file(q + "/config.json", d.str("m/config.json"));
        std::filesystem::copy_file(q + "/model.safetensors", d.str("m/model.safetensors"));
        std::filesystem::resize_file(d.str("m/model.safetensors"), 4000);
        auto [rc3, e3] = run("--model " + d.str("m") + " --inputs " + in + " --out " + d.str("o"));
        CHECK(rc3 == 1);
        CHECK_THAT(e3, Catch::Contains("m/model.safetensors") && Catch::Contains("tensor '"));
        CHECK_FALSE(std::filesystem::exists(d.str("o")));
        // An id outside the vocabulary.
        io::save_safetensors(d.str("bad_ids.safetensors"), {{"input_ids", torch::tensor({{1, 600}}, torch::kInt64)}});
        auto [rc4, e4] = run("--model " + q + " --inputs " + d.str("bad_ids.safetensors") + " --out " + d.str("o"));
        CHECK(rc4 == 1);
        CHECK_THAT(e4, Catch::Contains("token ids must be in [0, 512)"));
    }
}

TEST_CASE("decoders: the pad_token_id embedding row gets no gradient (HF padding_idx)", "[parity][decoder]") {
    auto f = load_fixture("stablelm");  // config pad_token_id 0, untied
    REQUIRE(f.lm->config().pad_token_id == 0);
    auto ids = f.in.at("input_ids").clone();
    ids[0][3] = 0;
    ids[0][5] = 0;
    f.lm->train();
    auto o = f.lm->forward(ids, torch::Tensor());
    model::causal_lm_loss(o.logits_BTV, ids).backward();
    const auto g = f.lm->model->embed_tokens->weight.grad();
    CHECK(g[0].abs().max().item<double>() == 0.0);
    CHECK(g[ids[0][4].item<int64_t>()].abs().max().item<double>() > 0.0);
}
