// A minimal unpickler for torch.save archives of tensor dicts (see torch_pickle.h).
//
// Pickle protocol 2 (what torch.save writes) plus the protocol-4 framing opcodes. Storages are
// persistent ids ('storage', torch.<T>Storage, key, location, numel) whose bytes live in the zip
// record data/<key>; tensors are torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...).

#include "io/torch_pickle.h"

#include <caffe2/serialize/inline_container.h>

#include <cstring>
#include <map>
#include <memory>
#include <stdexcept>
#include <unordered_map>
#include <vector>

namespace idamoe::io {

namespace {

struct Obj;
using ObjP = std::shared_ptr<Obj>;

struct Obj {
    enum Kind { None, Bool, Int, Float, Str, Tuple, List, Dict, Global, Storage, Tensor } kind = None;
    int64_t i = 0;
    double f = 0;
    std::string s;                                  // Str; Global "module.name"; Storage key
    std::vector<ObjP> items;                        // Tuple, List
    std::vector<std::pair<ObjP, ObjP>> entries;     // Dict, in insertion order
    torch::ScalarType dtype = torch::kFloat32;      // Storage
    torch::Tensor t;                                // Tensor
};

ObjP make(Obj::Kind k) {
    auto o = std::make_shared<Obj>();
    o->kind = k;
    return o;
}

const std::map<std::string, torch::ScalarType> kStorageTypes = {
    {"torch.FloatStorage", torch::kFloat32}, {"torch.DoubleStorage", torch::kFloat64},
    {"torch.HalfStorage", torch::kFloat16},  {"torch.BFloat16Storage", torch::kBFloat16},
    {"torch.LongStorage", torch::kInt64},    {"torch.IntStorage", torch::kInt32},
    {"torch.ShortStorage", torch::kInt16},   {"torch.CharStorage", torch::kInt8},
    {"torch.ByteStorage", torch::kUInt8},    {"torch.BoolStorage", torch::kBool},
};

class Unpickler {
public:
    Unpickler(const std::string & path, caffe2::serialize::PyTorchStreamReader & zip, const char * data, size_t size)
        : path_(path), zip_(zip), p_(data), end_(data + size) {}

    ObjP run() {
        while (true) {
            const uint8_t op = u8();
            switch (op) {
                case 0x80: u8(); break;                                   // PROTO
                case 0x95: bytes(8); break;                               // FRAME
                case '.': return pop();                                   // STOP
                case '(': marks_.push_back(stack_.size()); break;         // MARK
                case 'N': stack_.push_back(make(Obj::None)); break;
                case 0x88: case 0x89: {                                   // NEWTRUE / NEWFALSE
                    auto o = make(Obj::Bool);
                    o->i = op == 0x88;
                    stack_.push_back(o);
                    break;
                }
                case 'K': push_int(u8()); break;                          // BININT1
                case 'M': push_int(le(2)); break;                         // BININT2
                case 'J': push_int(static_cast<int32_t>(le(4))); break;   // BININT
                case 0x8a: push_int(long_n(u8())); break;                 // LONG1
                case 0x8b: push_int(long_n(le(4))); break;                // LONG4
                case 'G': {                                               // BINFLOAT, big-endian
                    uint64_t bits = 0;
                    for (int k = 0; k < 8; ++k) bits = (bits << 8) | u8();
                    auto o = make(Obj::Float);
                    std::memcpy(&o->f, &bits, 8);
                    stack_.push_back(o);
                    break;
                }
                case 'X': push_str(le(4)); break;                         // BINUNICODE
                case 0x8c: push_str(u8()); break;                         // SHORT_BINUNICODE
                case 'T': push_str(le(4)); break;                         // BINSTRING
                case 'U': push_str(u8()); break;                          // SHORT_BINSTRING
                case ')': stack_.push_back(make(Obj::Tuple)); break;      // EMPTY_TUPLE
                case ']': stack_.push_back(make(Obj::List)); break;       // EMPTY_LIST
                case '}': stack_.push_back(make(Obj::Dict)); break;       // EMPTY_DICT
                case 't': {                                               // TUPLE
                    auto o = make(Obj::Tuple);
                    o->items = pop_to_mark();
                    stack_.push_back(o);
                    break;
                }
                case 0x85: case 0x86: case 0x87: {                        // TUPLE1..3
                    auto o = make(Obj::Tuple);
                    o->items.resize(op - 0x84);
                    for (size_t k = o->items.size(); k-- > 0;) o->items[k] = pop();
                    stack_.push_back(o);
                    break;
                }
                case 'q': memo_[u8()] = top(); break;                     // BINPUT
                case 'r': memo_[le(4)] = top(); break;                    // LONG_BINPUT
                case 0x94: memo_[memo_.size()] = top(); break;            // MEMOIZE
                case 'h': stack_.push_back(memo(u8())); break;            // BINGET
                case 'j': stack_.push_back(memo(le(4))); break;           // LONG_BINGET
                case 'c': {                                               // GLOBAL module\nname\n
                    auto o = make(Obj::Global);
                    o->s = line();
                    o->s += "." + line();
                    stack_.push_back(o);
                    break;
                }
                case 'Q': stack_.push_back(persistent_load(pop())); break;  // BINPERSID
                case 'R': {                                               // REDUCE
                    auto args = pop();
                    auto fn = pop();
                    stack_.push_back(reduce(fn, args));
                    break;
                }
                case 'b': pop(); break;  // BUILD: OrderedDict._metadata / tensor state — not needed
                case 's': {              // SETITEM
                    auto v = pop();
                    auto k = pop();
                    dict_of(top())->entries.emplace_back(k, v);
                    break;
                }
                case 'u': {  // SETITEMS
                    auto kv = pop_to_mark();
                    auto d = dict_of(top());
                    if (kv.size() % 2) fail("odd number of items for SETITEMS");
                    for (size_t k = 0; k < kv.size(); k += 2) d->entries.emplace_back(kv[k], kv[k + 1]);
                    break;
                }
                case 'a': {  // APPEND
                    auto v = pop();
                    list_of(top())->items.push_back(v);
                    break;
                }
                case 'e': {  // APPENDS
                    auto vs = pop_to_mark();
                    auto l = list_of(top());
                    l->items.insert(l->items.end(), vs.begin(), vs.end());
                    break;
                }
                default: fail("unsupported pickle opcode 0x" + hex(op) + " (not a torch.save tensor dict?)");
            }
        }
    }

private:
    [[noreturn]] void fail(const std::string & what) const {
        throw std::runtime_error("checkpoint " + path_ + ": " + what);
    }
    static std::string hex(uint8_t b) {
        const char * d = "0123456789abcdef";
        return std::string{d[b >> 4], d[b & 15]};
    }
    const char * bytes(size_t n) {
        if (static_cast<size_t>(end_ - p_) < n) fail("data.pkl is truncated");
        const char * r = p_;
        p_ += n;
        return r;
    }
    uint8_t u8() { return static_cast<uint8_t>(*bytes(1)); }
    uint64_t le(size_t n) {
        const auto * b = reinterpret_cast<const uint8_t *>(bytes(n));
        uint64_t v = 0;
        for (size_t k = n; k-- > 0;) v = (v << 8) | b[k];
        return v;
    }
    int64_t long_n(uint64_t n) {  // little-endian two's complement of n bytes
        if (n > 8) fail("integer wider than 64 bits");
        if (n == 0) return 0;
        uint64_t v = le(n);
        if (n < 8 && (v >> (8 * n - 1)) & 1) v |= ~uint64_t(0) << (8 * n);
        return static_cast<int64_t>(v);
    }
    std::string line() {
        const char * s = p_;
        while (p_ < end_ && *p_ != '\n') ++p_;
        if (p_ == end_) fail("data.pkl is truncated");
        return std::string(s, p_++);
    }
    void push_int(int64_t v) {
        auto o = make(Obj::Int);
        o->i = v;
        stack_.push_back(o);
    }
    void push_str(uint64_t n) {
        auto o = make(Obj::Str);
        o->s.assign(bytes(n), n);
        stack_.push_back(o);
    }
    ObjP pop() {
        if (stack_.empty() || (!marks_.empty() && stack_.size() <= marks_.back())) fail("pickle stack underflow");
        auto o = stack_.back();
        stack_.pop_back();
        return o;
    }
    ObjP top() {
        if (stack_.empty()) fail("pickle stack underflow");
        return stack_.back();
    }
    std::vector<ObjP> pop_to_mark() {
        if (marks_.empty()) fail("pickle MARK missing");
        std::vector<ObjP> v(stack_.begin() + static_cast<std::ptrdiff_t>(marks_.back()), stack_.end());
        stack_.resize(marks_.back());
        marks_.pop_back();
        return v;
    }
    ObjP memo(uint64_t k) {
        auto it = memo_.find(k);
        if (it == memo_.end()) fail("pickle memo entry " + std::to_string(k) + " missing");
        return it->second;
    }
    ObjP dict_of(const ObjP & o) {
        if (o->kind != Obj::Dict) fail("SETITEM(S) on a non-dict");
        return o;
    }
    ObjP list_of(const ObjP & o) {
        if (o->kind != Obj::List) fail("APPEND(S) on a non-list");
        return o;
    }
    const ObjP & arg(const ObjP & tuple, size_t k, Obj::Kind kind, const char * what) {
        if (tuple->kind != Obj::Tuple || tuple->items.size() <= k || tuple->items[k]->kind != kind)
            fail(std::string("malformed arguments for ") + what);
        return tuple->items[k];
    }
    std::vector<int64_t> ints(const ObjP & tuple, const char * what) {
        std::vector<int64_t> v;
        for (const auto & x : tuple->items) {
            if (x->kind != Obj::Int) fail(std::string("non-integer in ") + what);
            v.push_back(x->i);
        }
        return v;
    }

    // ('storage', torch.FloatStorage, key, location, numel)
    ObjP persistent_load(const ObjP & pid) {
        const auto & tag = arg(pid, 0, Obj::Str, "persistent id");
        if (tag->s != "storage") fail("unknown persistent id '" + tag->s + "'");
        const auto & type = arg(pid, 1, Obj::Global, "storage");
        auto it = kStorageTypes.find(type->s);
        if (it == kStorageTypes.end()) fail("unsupported storage type " + type->s);
        auto o = make(Obj::Storage);
        o->dtype = it->second;
        o->s = arg(pid, 2, Obj::Str, "storage")->s;
        return o;
    }

    torch::Tensor storage_tensor(const ObjP & storage) {
        auto it = storages_.find(storage->s);
        if (it != storages_.end()) return it->second;
        const std::string rec = "data/" + storage->s;
        if (!zip_.hasRecord(rec)) fail("storage record " + rec + " missing from the archive");
        at::DataPtr ptr;
        size_t n = 0;
        std::tie(ptr, n) = zip_.getRecord(rec);
        const size_t item = c10::elementSize(storage->dtype);
        if (n % item) fail("storage " + rec + " has " + std::to_string(n) + " bytes, not a multiple of the element size");
        auto flat = torch::empty({static_cast<int64_t>(n / item)}, torch::TensorOptions().dtype(storage->dtype));
        if (n) std::memcpy(flat.data_ptr(), ptr.get(), n);
        storages_[storage->s] = flat;
        return flat;
    }

    ObjP reduce(const ObjP & fn, const ObjP & args) {
        if (fn->kind != Obj::Global) fail("REDUCE of a non-global");
        if (fn->s == "collections.OrderedDict") return make(Obj::Dict);
        if (fn->s == "torch._utils._rebuild_tensor_v2" || fn->s == "torch._utils._rebuild_tensor") {
            const auto & storage = arg(args, 0, Obj::Storage, fn->s.c_str());
            const int64_t offset = arg(args, 1, Obj::Int, fn->s.c_str())->i;
            const auto size = ints(arg(args, 2, Obj::Tuple, fn->s.c_str()), "tensor size");
            const auto stride = ints(arg(args, 3, Obj::Tuple, fn->s.c_str()), "tensor stride");
            torch::Tensor flat = storage_tensor(storage);
            if (size.size() != stride.size() || offset < 0) fail("tensor size/stride/offset inconsistent");
            int64_t last = offset, numel = 1;
            for (size_t k = 0; k < size.size(); ++k) {
                if (size[k] < 0 || stride[k] < 0) fail("negative tensor size or stride");
                numel *= size[k];
                last += (size[k] - 1) * stride[k];
            }
            if (numel > 0 && last >= flat.numel())
                fail("tensor view [offset " + std::to_string(offset) + "] runs past its storage of " +
                     std::to_string(flat.numel()) + " elements");
            auto o = make(Obj::Tensor);
            o->t = flat.as_strided(size, stride, offset);
            if (!o->t.is_contiguous() || o->t.numel() != flat.numel()) o->t = o->t.clone(at::MemoryFormat::Contiguous);
            return o;
        }
        if (fn->s == "torch._utils._rebuild_parameter" || fn->s == "torch._utils._rebuild_parameter_with_state")
            return arg(args, 0, Obj::Tensor, fn->s.c_str());
        fail("unsupported pickle global " + fn->s + " (only tensor dicts written by torch.save are read)");
    }

    std::string path_;
    caffe2::serialize::PyTorchStreamReader & zip_;
    const char * p_;
    const char * end_;
    std::vector<ObjP> stack_;
    std::vector<size_t> marks_;
    std::unordered_map<uint64_t, ObjP> memo_;
    std::map<std::string, torch::Tensor> storages_;
};

}  // namespace

TensorMap load_torch_state_dict(const std::string & path) {
    std::unique_ptr<caffe2::serialize::PyTorchStreamReader> zip;
    try {
        zip = std::make_unique<caffe2::serialize::PyTorchStreamReader>(path);
    } catch (const std::exception & e) {
        const std::string msg = e.what();
        throw std::runtime_error("checkpoint " + path +
                                 ": cannot unpickle: not a torch.save zip archive (truncated, corrupt, or the pre-1.6 "
                                 "legacy format): " + msg.substr(0, msg.find('\n')));
    }
    if (!zip->hasRecord("data.pkl")) throw std::runtime_error("checkpoint " + path + ": archive has no data.pkl");
    at::DataPtr pkl;
    size_t n = 0;
    try {
        std::tie(pkl, n) = zip->getRecord("data.pkl");
    } catch (const std::exception & e) {
        const std::string msg = e.what();
        throw std::runtime_error("checkpoint " + path + ": cannot unpickle: " + msg.substr(0, msg.find('\n')));
    }
    Unpickler u(path, *zip, static_cast<const char *>(pkl.get()), n);
    ObjP root;
    try {
        root = u.run();
    } catch (const c10::Error & e) {
        const std::string msg = e.what();
        throw std::runtime_error("checkpoint " + path + ": cannot unpickle: " + msg.substr(0, msg.find('\n')));
    }
    if (root->kind != Obj::Dict) throw std::runtime_error("checkpoint " + path + ": top-level object is not a dict of tensors");
    TensorMap out;
    for (const auto & [k, v] : root->entries) {
        if (k->kind != Obj::Str) throw std::runtime_error("checkpoint " + path + ": a dict key is not a string");
        if (v->kind != Obj::Tensor) throw std::runtime_error("checkpoint " + path + ": entry '" + k->s + "' is not a tensor");
        if (!out.emplace(k->s, v->t).second) throw std::runtime_error("checkpoint " + path + ": duplicate key '" + k->s + "'");
    }
    return out;
}

}  // namespace idamoe::io
