// defines: SpTokenizer (SentencePiece .model through libsentencepiece), make_sp_tokenizer
//
// SentencePiece never matches control symbols (<s>, </s>) written in text; HF's slow Llama tokenizer
// does (they are special tokens there). So control pieces are split out of the text first, exactly
// like added tokens in the BPE tokenizer, and decode writes them back as their literal text.
//
// libsentencepiece is reached through libidamoe_spm.so (src/data/spm_shim.cc), loaded with dlopen:
// libsentencepiece first with RTLD_DEEPBIND so that its embedded protobuf-lite binds to itself and
// not to LibTorch's libprotobuf (linking it directly aborts on protobuf's version check).
#include "data/tokenizer.h"
#include "data/tokenizer_impl.h"

#include <dlfcn.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <mutex>

#ifndef IDAMOE_SPM_SHIM
#define IDAMOE_SPM_SHIM "libidamoe_spm.so"
#endif

namespace idamoe::data::detail {

namespace {

struct SpmApi {
    void * (*load)(const char *, char *, size_t);
    void (*free_)(void *);
    void (*free_buf)(void *);
    int (*encode)(void *, const char *, size_t, int **, size_t *, char *, size_t);
    int (*decode)(void *, const int *, size_t, char **, size_t *, char *, size_t);
    int (*piece_size)(void *);
    int (*piece_to_id)(void *, const char *, size_t);
    const char * (*id_to_piece)(void *, int, size_t *);
    int (*is_control)(void *, int);
    int (*is_unknown)(void *, int);
    int (*eos_id)(void *);
    int (*pad_id)(void *);
};

#if defined(__SANITIZE_ADDRESS__)
#define IDAMOE_UNDER_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define IDAMOE_UNDER_ASAN 1
#endif
#endif

// Loads libsentencepiece (RTLD_DEEPBIND) and the shim once per process.
const SpmApi & spm_api() {
    static SpmApi api{};
    static std::string error;
    static std::once_flag once;
    std::call_once(once, [] {
#ifdef IDAMOE_UNDER_ASAN
        // The ASan runtime kills the process on any RTLD_DEEPBIND dlopen (google/sanitizers#611), and
        // without DEEPBIND the embedded protobuf-lite aborts: report it as an error instead.
        error = "SentencePiece tokenizers are not available in AddressSanitizer builds (libsentencepiece needs "
                "RTLD_DEEPBIND, which ASan refuses); use the normal build";
        return;
#endif
        if (!dlopen("libsentencepiece.so.0", RTLD_NOW | RTLD_LOCAL | RTLD_DEEPBIND) &&
            !dlopen("libsentencepiece.so", RTLD_NOW | RTLD_LOCAL | RTLD_DEEPBIND)) {
            error = std::string("cannot load libsentencepiece: ") + dlerror();
            return;
        }
        std::vector<std::string> candidates;
        if (const char * env = std::getenv("IDAMOE_SPM_SHIM")) candidates.emplace_back(env);
        candidates.emplace_back(IDAMOE_SPM_SHIM);
        std::error_code ec;
        auto exe = std::filesystem::read_symlink("/proc/self/exe", ec);
        if (!ec) candidates.push_back((exe.parent_path() / "libidamoe_spm.so").string());
        candidates.emplace_back("libidamoe_spm.so");
        void * h = nullptr;
        for (const auto & c : candidates)
            if ((h = dlopen(c.c_str(), RTLD_NOW | RTLD_LOCAL))) break;
        if (!h) {
            error = "cannot load libidamoe_spm.so (set IDAMOE_SPM_SHIM to its path): " + std::string(dlerror());
            return;
        }
        auto sym = [&](const char * name) {
            void * f = dlsym(h, name);
            if (!f) error = std::string("libidamoe_spm.so lacks ") + name;
            return f;
        };
#define IDAMOE_SPM_SYM(field, name) api.field = reinterpret_cast<decltype(api.field)>(sym(name))
        IDAMOE_SPM_SYM(load, "idamoe_spm_load");
        IDAMOE_SPM_SYM(free_, "idamoe_spm_free");
        IDAMOE_SPM_SYM(free_buf, "idamoe_spm_free_buf");
        IDAMOE_SPM_SYM(encode, "idamoe_spm_encode");
        IDAMOE_SPM_SYM(decode, "idamoe_spm_decode");
        IDAMOE_SPM_SYM(piece_size, "idamoe_spm_piece_size");
        IDAMOE_SPM_SYM(piece_to_id, "idamoe_spm_piece_to_id");
        IDAMOE_SPM_SYM(id_to_piece, "idamoe_spm_id_to_piece");
        IDAMOE_SPM_SYM(is_control, "idamoe_spm_is_control");
        IDAMOE_SPM_SYM(is_unknown, "idamoe_spm_is_unknown");
        IDAMOE_SPM_SYM(eos_id, "idamoe_spm_eos_id");
        IDAMOE_SPM_SYM(pad_id, "idamoe_spm_pad_id");
#undef IDAMOE_SPM_SYM
    });
    if (!error.empty()) throw TokenizerError(error);
    return api;
}

class SpTokenizer final : public Tokenizer {
public:
    SpTokenizer(const std::string & path, const SpecialNames & names) : api_(spm_api()), path_(path) {
        char err[512] = {0};
        h_ = api_.load(path.c_str(), err, sizeof err);
        if (!h_) throw TokenizerError("cannot load SentencePiece model " + path + ": " + err);
        n_ = api_.piece_size(h_);
        for (int id = 0; id < n_; ++id)
            if (api_.is_control(h_, id) && !piece(id).empty()) specials_.emplace_back(piece(id), id);
        std::stable_sort(specials_.begin(), specials_.end(),
                         [](const auto & a, const auto & b) { return a.first.size() > b.first.size(); });
        auto find = [&](const std::string & s) -> int64_t {
            if (s.empty()) return -1;
            auto id = id_of(s);
            return id ? *id : -1;
        };
        eos_ = find(names.eos);
        if (eos_ < 0) eos_ = api_.eos_id(h_);
        pad_ = find(names.pad);
        if (pad_ < 0) pad_ = api_.pad_id(h_);
        if (pad_ < 0) pad_ = eos_;
    }
    ~SpTokenizer() override { api_.free_(h_); }

    std::vector<int64_t> encode(const std::string & raw) const override {
        const std::string text = utf8_valid(raw) ? raw : utf8_sanitize(raw);
        std::vector<int64_t> out;
        size_t seg = 0, i = 0;
        auto flush = [&](size_t end) {
            if (end <= seg) return;
            int * ids = nullptr;
            size_t n = 0;
            char err[512] = {0};
            if (api_.encode(h_, text.data() + seg, end - seg, &ids, &n, err, sizeof err))
                throw TokenizerError(std::string("SentencePiece encode failed: ") + err);
            out.insert(out.end(), ids, ids + n);
            api_.free_buf(ids);
        };
        while (i < text.size()) {
            bool hit = false;
            for (const auto & [s, id] : specials_)
                if (text.compare(i, s.size(), s) == 0) {
                    flush(i);
                    out.push_back(id);
                    i += s.size();
                    seg = i;
                    hit = true;
                    break;
                }
            if (!hit) ++i;
        }
        flush(text.size());
        return out;
    }

    std::string decode(const std::vector<int64_t> & ids) const override {
        std::string text;
        std::vector<int> run;
        auto flush = [&] {
            if (run.empty()) return;
            char * s = nullptr;
            size_t n = 0;
            char err[512] = {0};
            if (api_.decode(h_, run.data(), run.size(), &s, &n, err, sizeof err))
                throw TokenizerError(std::string("SentencePiece decode failed: ") + err);
            text.append(s, n);
            api_.free_buf(s);
            run.clear();
        };
        for (int64_t id : ids) {
            if (id < 0 || id >= n_)
                throw TokenizerError("decode: id " + std::to_string(id) + " is not in the vocabulary of " + path_);
            if (api_.is_control(h_, static_cast<int>(id))) {
                flush();
                text += piece(static_cast<int>(id));
            } else {
                run.push_back(static_cast<int>(id));
            }
        }
        flush();
        return utf8_sanitize(text);
    }

    std::optional<int64_t> id_of(const std::string & token) const override {
        int id = api_.piece_to_id(h_, token.data(), token.size());
        if (api_.is_unknown(h_, id) && piece(id) != token) return std::nullopt;
        return id;
    }
    std::string token_of(int64_t id) const override {
        if (id < 0 || id >= n_) throw TokenizerError("token_of: id " + std::to_string(id) + " out of vocabulary");
        return piece(static_cast<int>(id));
    }
    int64_t vocab_size() const override { return n_; }
    int64_t eos_id() const override { return eos_; }
    int64_t pad_id() const override { return pad_; }
    std::vector<std::pair<std::string, int64_t>> special_tokens() const override { return specials_; }
    std::string describe() const override { return "SentencePiece " + path_ + " (" + std::to_string(n_) + " pieces)"; }

private:
    std::string piece(int id) const {
        size_t n = 0;
        const char * p = api_.id_to_piece(h_, id, &n);
        return std::string(p, n);
    }

    const SpmApi & api_;
    std::string path_;
    void * h_ = nullptr;
    int n_ = 0;
    std::vector<std::pair<std::string, int64_t>> specials_;
    int64_t eos_ = -1, pad_ = -1;
};

}  // namespace

std::shared_ptr<Tokenizer> make_sp_tokenizer(const std::string & model_path, const SpecialNames & names) {
    return std::make_shared<SpTokenizer>(model_path, names);
}

}  // namespace idamoe::data::detail
