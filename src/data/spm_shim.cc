// defines: idamoe_spm_* — a C ABI around libsentencepiece, built as its own shared library
// (libidamoe_spm.so, not part of idamoe_core: the .cc extension keeps it out of the src/*.cpp glob).
//
// Why: libsentencepiece embeds and exports protobuf-lite 3.14; LibTorch links the full libprotobuf
// 3.21. Linked into one process, the embedded copy's version check resolves to 3.21 and aborts
// ("compiled against version 3.14.0"). sp_tokenizer.cpp therefore dlopen()s libsentencepiece with
// RTLD_DEEPBIND (it binds to its own protobuf) and this shim with RTLD_LOCAL, and talks to it only
// through these plain C functions.
#include <sentencepiece_processor.h>

#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

namespace {
void set_err(char * err, size_t n, const std::string & msg) {
    if (err && n) { std::strncpy(err, msg.c_str(), n - 1); err[n - 1] = 0; }
}
sentencepiece::SentencePieceProcessor * P(void * h) { return static_cast<sentencepiece::SentencePieceProcessor *>(h); }
}  // namespace

extern "C" {

void * idamoe_spm_load(const char * path, char * err, size_t errlen) {
    auto * sp = new sentencepiece::SentencePieceProcessor();
    auto st = sp->Load(path);
    if (!st.ok()) { set_err(err, errlen, st.ToString()); delete sp; return nullptr; }
    return sp;
}
void idamoe_spm_free(void * h) { delete P(h); }
void idamoe_spm_free_buf(void * p) { std::free(p); }

int idamoe_spm_encode(void * h, const char * text, size_t len, int ** ids, size_t * n, char * err, size_t errlen) {
    std::vector<int> out;
    auto st = P(h)->Encode(std::string_view(text, len), &out);
    if (!st.ok()) { set_err(err, errlen, st.ToString()); return 1; }
    *n = out.size();
    *ids = static_cast<int *>(std::malloc(sizeof(int) * (out.size() + 1)));
    std::memcpy(*ids, out.data(), sizeof(int) * out.size());
    return 0;
}
int idamoe_spm_decode(void * h, const int * ids, size_t n, char ** text, size_t * len, char * err, size_t errlen) {
    std::string out;
    auto st = P(h)->Decode(std::vector<int>(ids, ids + n), &out);
    if (!st.ok()) { set_err(err, errlen, st.ToString()); return 1; }
    *len = out.size();
    *text = static_cast<char *>(std::malloc(out.size() + 1));
    std::memcpy(*text, out.data(), out.size());
    return 0;
}
int idamoe_spm_piece_size(void * h) { return P(h)->GetPieceSize(); }
int idamoe_spm_piece_to_id(void * h, const char * s, size_t len) { return P(h)->PieceToId(std::string_view(s, len)); }
const char * idamoe_spm_id_to_piece(void * h, int id, size_t * len) {
    const std::string & s = P(h)->IdToPiece(id);
    *len = s.size();
    return s.data();
}
int idamoe_spm_is_control(void * h, int id) { return P(h)->IsControl(id); }
int idamoe_spm_is_unknown(void * h, int id) { return P(h)->IsUnknown(id); }
int idamoe_spm_eos_id(void * h) { return P(h)->eos_id(); }
int idamoe_spm_pad_id(void * h) { return P(h)->pad_id(); }
}
