// safetensors reader/writer and Hugging Face checkpoint-directory loading (see safetensors.h).
//
// Validation follows the reference reader (huggingface/safetensors): header length capped at
// 100 MB and inside the file, JSON object with unique keys, known dtype, shape*itemsize equal to
// end-begin, offsets inside the data buffer and not overlapping. Everything is checked before the
// first tensor is created, so a corrupt or truncated file is one clear exception, never a crash.

#include "io/safetensors.h"

#include "io/torch_pickle.h"

#include <nlohmann/json.hpp>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <set>
#include <sstream>
#include <stdexcept>

namespace idamoe::io {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

constexpr uint64_t kMaxHeaderBytes = 100ull * 1000 * 1000;  // reference reader's cap (safetensors README)

struct DtypeEntry {
    const char * name;
    torch::ScalarType type;
    size_t itemsize;
};

// The dtypes LibTorch 1.13 can hold; U16/U32/U64/F8_* are valid safetensors but rejected by name.
const DtypeEntry kDtypes[] = {
    {"F64", torch::kFloat64, 8}, {"F32", torch::kFloat32, 4}, {"F16", torch::kFloat16, 2},
    {"BF16", torch::kBFloat16, 2}, {"I64", torch::kInt64, 8}, {"I32", torch::kInt32, 4},
    {"I16", torch::kInt16, 2}, {"I8", torch::kInt8, 1}, {"U8", torch::kUInt8, 1},
    {"BOOL", torch::kBool, 1},
};

const DtypeEntry * dtype_by_name(const std::string & name) {
    for (const auto & d : kDtypes)
        if (name == d.name) return &d;
    return nullptr;
}

const DtypeEntry * dtype_by_type(torch::ScalarType t) {
    for (const auto & d : kDtypes)
        if (t == d.type) return &d;
    return nullptr;
}

std::string shape_str(const std::vector<int64_t> & shape) {
    std::ostringstream s;
    s << '[';
    for (size_t i = 0; i < shape.size(); ++i) s << (i ? ", " : "") << shape[i];
    s << ']';
    return s.str();
}

[[noreturn]] void fail(const std::string & path, const std::string & what) {
    throw std::runtime_error("safetensors " + path + ": " + what);
}

bool host_is_little_endian() {
    const uint16_t one = 1;
    unsigned char b;
    std::memcpy(&b, &one, 1);
    return b == 1;
}

}  // namespace

// ------------------------------------------------------------------------------------------
// The memory mapping: private copy-on-write, so a zero-copy tensor that is written to never
// touches the file (and never faults on a read-only page).
struct SafetensorsFile::Mapping {
    void * base = nullptr;
    size_t size = 0;
    ~Mapping() {
        if (base && base != MAP_FAILED) munmap(base, size);
    }
};

SafetensorsFile::SafetensorsFile(const std::string & path) : path_(path), map_(std::make_shared<Mapping>()) {
    if (!host_is_little_endian()) fail(path, "big-endian hosts are not supported");
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) fail(path, std::string("cannot open: ") + std::strerror(errno));
    struct stat st {};
    if (fstat(fd, &st) != 0) {
        int e = errno;
        ::close(fd);
        fail(path, std::string("cannot stat: ") + std::strerror(e));
    }
    if (!S_ISREG(st.st_mode)) {
        ::close(fd);
        fail(path, "not a regular file");
    }
    const uint64_t file_size = static_cast<uint64_t>(st.st_size);
    if (file_size < 8) {
        ::close(fd);
        fail(path, "file is " + std::to_string(file_size) + " bytes, shorter than the 8-byte header length");
    }
    map_->size = file_size;
    map_->base = mmap(nullptr, file_size, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
    ::close(fd);
    if (map_->base == MAP_FAILED) {
        map_->base = nullptr;
        fail(path, std::string("mmap failed: ") + std::strerror(errno));
    }
    const auto * bytes = static_cast<const unsigned char *>(map_->base);

    uint64_t n = 0;
    std::memcpy(&n, bytes, 8);  // little-endian host checked above
    if (n > kMaxHeaderBytes)
        fail(path, "header length " + std::to_string(n) + " exceeds the 100 MB limit (corrupt or not a safetensors file)");
    if (n > file_size - 8)
        fail(path, "header length " + std::to_string(n) + " runs past the end of the file (" +
                       std::to_string(file_size) + " bytes): truncated or not a safetensors file");
    const uint64_t data_size = file_size - 8 - n;
    const char * hdr = reinterpret_cast<const char *>(bytes + 8);

    // nlohmann keeps the last of duplicate keys silently; the callback sees every key first.
    std::set<std::string> seen;
    std::string duplicate;
    json::parser_callback_t on_event = [&](int depth, json::parse_event_t ev, json & parsed) {
        if (ev == json::parse_event_t::key && depth == 1) {
            const std::string k = parsed.get<std::string>();
            if (!seen.insert(k).second && duplicate.empty()) duplicate = k;
        }
        return true;
    };
    json header;
    try {
        header = json::parse(hdr, hdr + n, on_event);
    } catch (const json::exception & e) {
        fail(path, std::string("header is not valid JSON: ") + e.what());
    }
    if (!duplicate.empty()) fail(path, "duplicate tensor name '" + duplicate + "' in header");
    if (!header.is_object()) fail(path, "header JSON is not an object");

    for (auto it = header.begin(); it != header.end(); ++it) {
        const std::string & name = it.key();
        const json & v = it.value();
        if (name == "__metadata__") {
            if (!v.is_object()) fail(path, "__metadata__ is not an object");
            for (auto m = v.begin(); m != v.end(); ++m) {
                if (!m.value().is_string()) fail(path, "__metadata__ value of '" + m.key() + "' is not a string");
                metadata_[m.key()] = m.value().get<std::string>();
            }
            continue;
        }
        const std::string where = "tensor '" + name + "': ";
        if (!v.is_object()) fail(path, where + "entry is not an object");
        if (!v.contains("dtype") || !v["dtype"].is_string()) fail(path, where + "missing string field 'dtype'");
        if (!v.contains("shape") || !v["shape"].is_array()) fail(path, where + "missing array field 'shape'");
        if (!v.contains("data_offsets") || !v["data_offsets"].is_array() || v["data_offsets"].size() != 2)
            fail(path, where + "missing field 'data_offsets' [begin, end]");
        TensorInfo info;
        info.name = name;
        info.dtype = v["dtype"].get<std::string>();
        const DtypeEntry * dt = dtype_by_name(info.dtype);
        if (!dt) fail(path, where + "unsupported dtype '" + info.dtype + "'");
        uint64_t numel = 1;
        for (const auto & d : v["shape"]) {
            if (!d.is_number_unsigned()) fail(path, where + "shape entries must be non-negative integers");
            const uint64_t x = d.get<uint64_t>();
            if (x > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) ||
                (x != 0 && numel > std::numeric_limits<uint64_t>::max() / x))
                fail(path, where + "shape overflows");
            numel *= x;
            info.shape.push_back(static_cast<int64_t>(x));
        }
        for (const auto & o : v["data_offsets"])
            if (!o.is_number_unsigned()) fail(path, where + "data_offsets must be non-negative integers");
        info.begin = v["data_offsets"][0].get<uint64_t>();
        info.end = v["data_offsets"][1].get<uint64_t>();
        if (info.end < info.begin)
            fail(path, where + "data_offsets end " + std::to_string(info.end) + " < begin " + std::to_string(info.begin));
        if (info.end > data_size)
            fail(path, where + "data_offsets [" + std::to_string(info.begin) + ", " + std::to_string(info.end) +
                           "] run past the data buffer of " + std::to_string(data_size) + " bytes (truncated file?)");
        if (numel > std::numeric_limits<uint64_t>::max() / dt->itemsize) fail(path, where + "shape overflows");
        if (numel * dt->itemsize != info.end - info.begin)
            fail(path, where + "shape " + shape_str(info.shape) + " x " + info.dtype + " needs " +
                           std::to_string(numel * dt->itemsize) + " bytes but data_offsets span " +
                           std::to_string(info.end - info.begin));
        infos_.push_back(std::move(info));
    }

    // No two tensors may share bytes (empty tensors occupy none).
    std::vector<const TensorInfo *> by_begin;
    for (const auto & t : infos_)
        if (t.end > t.begin) by_begin.push_back(&t);
    std::sort(by_begin.begin(), by_begin.end(),
              [](const TensorInfo * a, const TensorInfo * b) { return a->begin < b->begin; });
    for (size_t i = 1; i < by_begin.size(); ++i)
        if (by_begin[i]->begin < by_begin[i - 1]->end)
            fail(path, "tensors '" + by_begin[i - 1]->name + "' and '" + by_begin[i]->name + "' overlap in the data buffer");

    for (size_t i = 0; i < infos_.size(); ++i) index_[infos_[i].name] = i;
}

SafetensorsFile::~SafetensorsFile() = default;

bool SafetensorsFile::contains(const std::string & name) const { return index_.count(name) > 0; }

torch::Tensor SafetensorsFile::get(const std::string & name, bool zero_copy) const {
    auto it = index_.find(name);
    if (it == index_.end()) fail(path_, "no tensor named '" + name + "'");
    const TensorInfo & info = infos_[it->second];
    const DtypeEntry * dt = dtype_by_name(info.dtype);
    uint64_t n = 0;
    std::memcpy(&n, map_->base, 8);
    char * data = static_cast<char *>(map_->base) + 8 + n + info.begin;
    auto opts = torch::TensorOptions().dtype(dt->type);
    const bool aligned = reinterpret_cast<uintptr_t>(data) % dt->itemsize == 0;
    if (zero_copy && aligned && info.end > info.begin) {
        auto keep = map_;
        return torch::from_blob(data, info.shape, [keep](void *) {}, opts);
    }
    torch::Tensor t = torch::empty(info.shape, opts);
    if (info.end > info.begin) std::memcpy(t.data_ptr(), data, info.end - info.begin);
    return t;
}

TensorMap load_safetensors(const std::string & path) {
    SafetensorsFile f(path);
    TensorMap out;
    for (const auto & t : f.tensors()) out[t.name] = f.get(t.name);
    return out;
}

// ------------------------------------------------------------------------------------------
// Writer

void save_safetensors(const std::string & path, const TensorMap & tensors,
                      const std::map<std::string, std::string> & metadata) {
    if (!host_is_little_endian()) fail(path, "big-endian hosts are not supported");
    json header = json::object();
    if (!metadata.empty()) {
        json m = json::object();
        for (const auto & [k, v] : metadata) m[k] = v;
        header["__metadata__"] = m;
    }
    std::vector<torch::Tensor> blobs;
    uint64_t offset = 0;
    for (const auto & [name, t0] : tensors) {
        if (name == "__metadata__") fail(path, "'__metadata__' is reserved and cannot name a tensor");
        if (!t0.defined()) fail(path, "tensor '" + name + "' is undefined");
        const DtypeEntry * dt = dtype_by_type(t0.scalar_type());
        if (!dt) fail(path, "tensor '" + name + "': dtype " + std::string(c10::toString(t0.scalar_type())) + " cannot be written");
        torch::Tensor t = t0.detach().to(torch::kCPU).contiguous();
        const uint64_t bytes = static_cast<uint64_t>(t.numel()) * dt->itemsize;
        header[name] = {{"dtype", dt->name}, {"shape", t.sizes().vec()}, {"data_offsets", {offset, offset + bytes}}};
        offset += bytes;
        blobs.push_back(t);
    }
    std::string h = header.dump();
    h.append((8 - h.size() % 8) % 8, ' ');  // data buffer starts 8-byte aligned
    const uint64_t n = h.size();

    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    if (!out) fail(path, std::string("cannot open for writing: ") + std::strerror(errno));
    out.write(reinterpret_cast<const char *>(&n), 8);
    out.write(h.data(), static_cast<std::streamsize>(h.size()));
    for (const auto & t : blobs)
        out.write(static_cast<const char *>(t.data_ptr()), static_cast<std::streamsize>(t.numel() * t.element_size()));
    out.flush();
    if (!out) fail(path, "write failed (disk full?)");
}

// ------------------------------------------------------------------------------------------
// Checkpoint directories

namespace {

// torch.save zip archives (PyTorch >= 1.6), see torch_pickle.h.
TensorMap load_torch_bin(const std::string & path) { return load_torch_state_dict(path); }

json read_json_file(const std::string & path) {
    std::ifstream in(path);
    if (!in) throw std::runtime_error(path + ": cannot open");
    try {
        return json::parse(in);
    } catch (const json::exception & e) {
        throw std::runtime_error(path + ": invalid JSON: " + e.what());
    }
}

// model.safetensors.index.json / pytorch_model.bin.index.json: {"weight_map": {tensor: shard}}.
TensorMap load_sharded(const std::string & index_path, bool safetensors) {
    const json idx = read_json_file(index_path);
    if (!idx.contains("weight_map") || !idx["weight_map"].is_object())
        throw std::runtime_error(index_path + ": missing object 'weight_map'");
    std::map<std::string, std::vector<std::string>> by_shard;
    for (auto it = idx["weight_map"].begin(); it != idx["weight_map"].end(); ++it) {
        if (!it.value().is_string()) throw std::runtime_error(index_path + ": weight_map['" + it.key() + "'] is not a file name");
        by_shard[it.value().get<std::string>()].push_back(it.key());
    }
    const fs::path dir = fs::path(index_path).parent_path();
    TensorMap out;
    for (const auto & [shard, names] : by_shard) {
        const std::string shard_path = (dir / shard).string();
        TensorMap part = safetensors ? load_safetensors(shard_path) : load_torch_bin(shard_path);
        for (const auto & name : names) {
            auto it = part.find(name);
            if (it == part.end())
                throw std::runtime_error(index_path + ": tensor '" + name + "' is mapped to " + shard_path + ", which does not contain it");
            out[name] = it->second;
        }
        for (const auto & [name, t] : part)
            if (!out.count(name))
                throw std::runtime_error(shard_path + ": tensor '" + name + "' is not listed in " + index_path);
    }
    return out;
}

}  // namespace

TensorMap load_checkpoint_dir(const std::string & dir) {
    const fs::path d(dir);
    if (fs::is_regular_file(d)) {  // a single checkpoint file (e.g. an mm_projector.bin)
        return d.extension() == ".safetensors" ? load_safetensors(dir) : load_torch_bin(dir);
    }
    if (!fs::is_directory(d)) throw std::runtime_error("checkpoint " + dir + ": no such file or directory");
    if (fs::exists(d / "model.safetensors")) return load_safetensors((d / "model.safetensors").string());
    if (fs::exists(d / "model.safetensors.index.json"))
        return load_sharded((d / "model.safetensors.index.json").string(), true);
    if (fs::exists(d / "pytorch_model.bin")) return load_torch_bin((d / "pytorch_model.bin").string());
    if (fs::exists(d / "pytorch_model.bin.index.json"))
        return load_sharded((d / "pytorch_model.bin.index.json").string(), false);
    throw std::runtime_error("checkpoint " + dir +
                             ": found none of model.safetensors, model.safetensors.index.json, pytorch_model.bin, "
                             "pytorch_model.bin.index.json");
}

}  // namespace idamoe::io
