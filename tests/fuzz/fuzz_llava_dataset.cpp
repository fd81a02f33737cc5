// libFuzzer target: the LLaVA JSON dataset reader (records, conversations, <image> tags) with each
// conversation template's label masking and the tokenizer behind it.
#include "data/dataset.h"
#include "data/templates.h"
#include "data/tokenizer.h"
#include "fuzz_common.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t * data, size_t size) {
    static const std::string images = [] {
        std::string d = idamoe::fuzz::fuzz_temp_dir() + "/images";
        std::filesystem::create_directories(d);
        return d;
    }();
    if (size == 0) return 0;
    // The first byte picks the template and the file format, the rest is the file.
    static const char * kTemplates[] = {"plain", "moe_llava", "chatml"};
    const char * tmpl = kTemplates[data[0] % 3];
    std::string path = idamoe::fuzz::write_bytes((data[0] & 4) ? "d.jsonl" : "d.json", data + 1, size - 1);
    try {
        idamoe::data::LlavaDataset ds({{path, images}}, tmpl, 1.0);
        (void)ds.bad().summary();
    } catch (const std::exception &) {
    }
    return 0;
}
