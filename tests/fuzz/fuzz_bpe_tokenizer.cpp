// libFuzzer target: byte-level BPE. Even inputs: encode arbitrary bytes with the Qwen2 fixture
// tokenizer and decode back. Odd inputs: load the input itself as a tokenizer.json.
#include "data/tokenizer.h"
#include "fuzz_common.h"

#include <filesystem>

#ifndef IDAMOE_FUZZ_TOKENIZER
#define IDAMOE_FUZZ_TOKENIZER "tests/fixtures/tokenizer/qwen2/tokenizer.json"
#endif

extern "C" int LLVMFuzzerTestOneInput(const uint8_t * data, size_t size) {
    static const std::shared_ptr<idamoe::data::Tokenizer> qwen = idamoe::data::load_tokenizer(IDAMOE_FUZZ_TOKENIZER);
    if (size == 0) return 0;
    if ((data[0] & 1) == 0) {
        std::string text(reinterpret_cast<const char *>(data + 1), size - 1);
        try {
            auto ids = qwen->encode(text);
            std::string back = qwen->decode(ids);
            if (idamoe::data::utf8_valid(text) && back != idamoe::data::nfc(text)) __builtin_trap();
        } catch (const std::exception &) {
        }
        return 0;
    }
    std::string path = idamoe::fuzz::write_bytes("tokenizer.json", data + 1, size - 1);
    try {
        auto tok = idamoe::data::load_tokenizer(path);
        auto ids = tok->encode("Hello, world! 123 <|im_start|> \xE4\xBD\xA0\xE5\xA5\xBD");
        (void)tok->decode(ids);
    } catch (const std::exception &) {
    }
    return 0;
}
