// train-bpe-tokenizer: trains the demo's Qwen2-format byte-level BPE tokenizer.json (bpe_tokenizer.h).
//
//   train-bpe-tokenizer --corpus runs/demo/data/corpus.txt --vocab-size 512 --out runs/demo/tokenizer.json
//
// The four special tokens: <|endoftext|> (Qwen2's EOS; the moe_llava template's sep2),
// <|im_start|>/<|im_end|> (Qwen2's ChatML markers, for the chatml template), and <|extra_0|>, a pad
// token distinct from EOS, as MoE-LLaVA sets for Qwen (pad := unk = <|extra_0|>, protocol §2.1):
// pad == EOS would make its non-pad token count skip every EOS and mask whole samples.
#include "bpe_tokenizer.h"

#include <CLI/CLI.hpp>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <sstream>

int main(int argc, char ** argv) {
    CLI::App app{"train-bpe-tokenizer: a Qwen2-format byte-level BPE tokenizer.json from text files"};
    std::vector<std::string> corpora;
    std::string out;
    int64_t vocab_size = 512;
    app.add_option("--corpus", corpora, "Text file(s), one training text per line")->required()->check(CLI::ExistingFile);
    app.add_option("--vocab-size", vocab_size, "Target size: 256 byte tokens + merges + 4 special tokens")->check(CLI::Range(260, 1 << 20));
    app.add_option("--out", out, "tokenizer.json to write")->required();
    CLI11_PARSE(app, argc, argv);

    const auto t0 = std::chrono::steady_clock::now();
    try {
        std::vector<std::string> texts;
        for (const auto & f : corpora) {
            std::ifstream in(f, std::ios::binary);
            for (std::string line; std::getline(in, line);) texts.push_back(line);
        }
        if (texts.empty()) throw std::runtime_error("the corpus is empty");
        const std::vector<std::string> specials = {"<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|extra_0|>"};
        auto model = idamoe::demo::train_bpe(texts, vocab_size, specials);
        std::ofstream o(out, std::ios::binary);
        o << idamoe::demo::bpe_to_hf_json(model).dump(1) << "\n";
        if (!o) throw std::runtime_error(out + ": cannot write");

        // Report what the model will see: tokens per training text.
        idamoe::demo::BpeEncoder enc(model);
        size_t total = 0, longest = 0;
        for (const auto & t : texts) {
            size_t n = enc.encode(t).size();
            total += n;
            longest = std::max(longest, n);
        }
        const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        std::printf("train-bpe-tokenizer: %lld tokens (%zu merges, %zu specials) from %zu texts; "
                    "%.1f tokens/text on average, longest %zu; %s in %.1f s\n",
                    static_cast<long long>(model.size()), model.merges.size(), specials.size(), texts.size(),
                    static_cast<double>(total) / texts.size(), longest, out.c_str(), secs);
    } catch (const std::exception & e) {
        std::fprintf(stderr, "train-bpe-tokenizer: %s\n", e.what());
        return 1;
    }
    return 0;
}
