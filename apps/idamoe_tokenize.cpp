// idamoe-tokenize: look at what the tokenizer does, line by line.
//   idamoe-tokenize --tokenizer PATH --jsonl FILE            one JSON string per line → one JSON array of ids per line
//   idamoe-tokenize --tokenizer PATH --jsonl FILE --decode   one JSON array of ids per line → one JSON string per line
//   --stats                                                  throughput on stderr (MB/s, tokens/s)
// PATH: a model directory, a tokenizer.json or a SentencePiece .model. FILE "-" reads stdin.
#include "data/tokenizer.h"

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>

using namespace idamoe;

int main(int argc, char ** argv) {
    CLI::App app{"idamoe-tokenize: encode JSON strings to ids (or decode ids back), one per line"};
    std::string tok_path, jsonl;
    bool decode = false, stats = false;
    app.add_option("--tokenizer", tok_path, "Model directory, tokenizer.json or SentencePiece .model")->required();
    app.add_option("--jsonl", jsonl, "Input: one JSON value per line ('-' = stdin)")->required();
    app.add_flag("--decode", decode, "Input lines are arrays of ids; print the decoded strings");
    app.add_flag("--stats", stats, "Print throughput to stderr");
    try {
        app.parse(argc, argv);
    } catch (const CLI::ParseError & e) {
        return app.exit(e);
    }

    std::shared_ptr<data::Tokenizer> tok;
    try {
        tok = data::load_tokenizer(tok_path);
    } catch (const std::exception & e) {
        std::fprintf(stderr, "idamoe-tokenize: %s\n", e.what());
        return 2;
    }
    std::ifstream file;
    if (jsonl != "-") {
        file.open(jsonl, std::ios::binary);
        if (!file) {
            std::fprintf(stderr, "idamoe-tokenize: cannot open %s\n", jsonl.c_str());
            return 2;
        }
    }
    std::istream & in = jsonl == "-" ? std::cin : file;
    std::ios::sync_with_stdio(false);

    std::string line;
    int64_t lineno = 0, bytes = 0, tokens = 0, errors = 0;
    double seconds = 0;
    while (std::getline(in, line)) {
        ++lineno;
        try {
            auto j = nlohmann::json::parse(line);
            auto t0 = std::chrono::steady_clock::now();
            if (decode) {
                auto ids = j.get<std::vector<int64_t>>();
                std::string text = tok->decode(ids);
                seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
                tokens += static_cast<int64_t>(ids.size());
                bytes += static_cast<int64_t>(text.size());
                std::cout << nlohmann::json(text).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << '\n';
            } else {
                const std::string & text = j.get_ref<const std::string &>();
                auto ids = tok->encode(text);
                seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
                tokens += static_cast<int64_t>(ids.size());
                bytes += static_cast<int64_t>(text.size());
                std::cout << nlohmann::json(ids).dump() << '\n';
            }
        } catch (const std::exception & e) {
            ++errors;
            std::fprintf(stderr, "idamoe-tokenize: %s line %lld: %s\n", jsonl.c_str(), static_cast<long long>(lineno), e.what());
            std::cout << "null\n";  // keep output lines aligned with input lines
        }
    }
    if (stats)
        std::fprintf(stderr, "idamoe-tokenize: %lld lines, %.2f MB, %lld tokens in %.3f s: %.2f MB/s, %.0f tokens/s (%s)\n",
                     static_cast<long long>(lineno), bytes / 1e6, static_cast<long long>(tokens), seconds,
                     seconds > 0 ? bytes / 1e6 / seconds : 0.0, seconds > 0 ? tokens / seconds : 0.0,
                     tok->describe().c_str());
    return errors ? 1 : 0;
}
