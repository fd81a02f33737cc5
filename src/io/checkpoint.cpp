// defines: save_checkpoint, load_checkpoint, verify_checkpoint, list_checkpoints, resolve_resume,
//          capture_rng_state, restore_rng_state, crc32, write_safetensors_checked
#include "io/checkpoint.h"

#include <spdlog/spdlog.h>

#include <ATen/Context.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <regex>
#include <sstream>

#include <cstdlib>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

namespace fs = std::filesystem;

namespace idamoe::io {

// ---------------------------------------------------------------------------------------------------
// CRC-32 (reflected polynomial 0xEDB88320, as zlib), slicing-by-4 for ~1 GB/s on checkpoint-sized files.

namespace {
struct CrcTables {
    std::array<std::array<uint32_t, 256>, 4> t{};
    CrcTables() {
        for (uint32_t i = 0; i < 256; ++i) {
            uint32_t c = i;
            for (int k = 0; k < 8; ++k) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
            t[0][i] = c;
        }
        for (uint32_t i = 0; i < 256; ++i)
            for (int s = 1; s < 4; ++s) t[s][i] = (t[s - 1][i] >> 8) ^ t[0][t[s - 1][i] & 0xFF];
    }
};
const CrcTables & crc_tables() {
    static const CrcTables tables;
    return tables;
}
}  // namespace

uint32_t crc32(const void * data, size_t n, uint32_t crc) {
    const auto & t = crc_tables().t;
    const auto * p = static_cast<const unsigned char *>(data);
    uint32_t c = ~crc;
    while (n >= 4) {
        c ^= static_cast<uint32_t>(p[0]) | static_cast<uint32_t>(p[1]) << 8 | static_cast<uint32_t>(p[2]) << 16 |
             static_cast<uint32_t>(p[3]) << 24;
        c = t[3][c & 0xFF] ^ t[2][(c >> 8) & 0xFF] ^ t[1][(c >> 16) & 0xFF] ^ t[0][c >> 24];
        p += 4;
        n -= 4;
    }
    while (n--) c = t[0][(c ^ *p++) & 0xFF] ^ (c >> 8);
    return ~c;
}

// ---------------------------------------------------------------------------------------------------
// Checked, fsynced file writing.

namespace {

std::string os_error(const std::string & what, const std::string & path) {
    return what + " " + path + ": " + std::strerror(errno);
}

class CheckedFile {
public:
    explicit CheckedFile(const std::string & path) : path_(path) {
        fd_ = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        if (fd_ < 0) throw CheckpointError(os_error("cannot create", path));
    }
    ~CheckedFile() {
        if (fd_ >= 0) ::close(fd_);
    }
    void write(const void * data, size_t n) {
        const auto * p = static_cast<const char *>(data);
        crc_ = crc32(p, n, crc_);
        size_ += n;
        while (n > 0) {
            const ssize_t w = ::write(fd_, p, std::min<size_t>(n, size_t{1} << 30));
            if (w < 0) {
                if (errno == EINTR) continue;
                throw CheckpointError(os_error("write failed on", path_));
            }
            p += w;
            n -= static_cast<size_t>(w);
        }
    }
    void write(const std::string & s) { write(s.data(), s.size()); }
    void close() {
        if (::fsync(fd_) != 0) throw CheckpointError(os_error("fsync failed on", path_));
        const int fd = fd_;
        fd_ = -1;
        if (::close(fd) != 0) throw CheckpointError(os_error("close failed on", path_));
    }
    uint64_t size() const { return size_; }
    uint32_t crc() const { return crc_; }

private:
    std::string path_;
    int fd_ = -1;
    uint64_t size_ = 0;
    uint32_t crc_ = 0;
};

void fsync_dir(const std::string & dir) {
    const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) throw CheckpointError(os_error("cannot open folder", dir));
    const int rc = ::fsync(fd);
    ::close(fd);
    if (rc != 0) throw CheckpointError(os_error("fsync failed on folder", dir));
}

const char * safetensors_dtype(torch::ScalarType t) {
    switch (t) {
        case torch::kFloat64: return "F64";
        case torch::kFloat32: return "F32";
        case torch::kFloat16: return "F16";
        case torch::kBFloat16: return "BF16";
        case torch::kInt64: return "I64";
        case torch::kInt32: return "I32";
        case torch::kInt16: return "I16";
        case torch::kInt8: return "I8";
        case torch::kUInt8: return "U8";
        case torch::kBool: return "BOOL";
        default: return nullptr;
    }
}

std::pair<uint64_t, uint32_t> write_text_file(const std::string & path, const std::string & text) {
    CheckedFile f(path);
    f.write(text);
    f.close();
    return {f.size(), f.crc()};
}

std::string checkpoint_name(int64_t step) {
    char buf[64];
    std::snprintf(buf, sizeof buf, "checkpoint-%08lld", static_cast<long long>(step));
    return buf;
}

int64_t step_of(const std::string & name) {
    static const std::regex kName(R"(^checkpoint-(\d+)$)");
    std::smatch m;
    if (!std::regex_match(name, m, kName)) return -1;
    return std::stoll(m[1].str());
}

std::string read_all(const std::string & path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw CheckpointError("cannot read " + path);
    std::ostringstream ss;
    ss << in.rdbuf();
    return ss.str();
}

torch::ScalarType dtype_from_safetensors(const std::string & dt, const std::string & path) {
    static const std::map<std::string, torch::ScalarType> kMap = {
        {"F64", torch::kFloat64}, {"F32", torch::kFloat32}, {"F16", torch::kFloat16}, {"BF16", torch::kBFloat16},
        {"I64", torch::kInt64},   {"I32", torch::kInt32},   {"I16", torch::kInt16},   {"I8", torch::kInt8},
        {"U8", torch::kUInt8},    {"BOOL", torch::kBool}};
    auto it = kMap.find(dt);
    if (it == kMap.end()) throw CheckpointError(path + ": unsupported dtype " + dt);
    return it->second;
}

// Reads back a file this module wrote (already CRC-verified): owning tensors, offsets checked.
// Kept here, not shared with io::load_safetensors, so checkpoints depend on nothing but this file.
TensorMap read_safetensors_owned(const std::string & path) {
    const std::string bytes = read_all(path);
    if (bytes.size() < 8) throw CheckpointError(path + ": shorter than a safetensors header");
    uint64_t hlen = 0;
    for (int i = 0; i < 8; ++i) hlen |= static_cast<uint64_t>(static_cast<unsigned char>(bytes[i])) << (8 * i);
    if (hlen > bytes.size() - 8) throw CheckpointError(path + ": header length exceeds the file");
    const auto header = nlohmann::json::parse(bytes.substr(8, hlen));
    const uint64_t data_size = bytes.size() - 8 - hlen;
    TensorMap out;
    for (const auto & [name, info] : header.items()) {
        if (name == "__metadata__") continue;
        const auto dtype = dtype_from_safetensors(info.at("dtype").get<std::string>(), path);
        const auto shape = info.at("shape").get<std::vector<int64_t>>();
        const auto off = info.at("data_offsets").get<std::vector<uint64_t>>();
        torch::Tensor t = torch::empty(shape, torch::TensorOptions().dtype(dtype));
        const uint64_t nbytes = static_cast<uint64_t>(t.numel()) * t.element_size();
        if (off.size() != 2 || off[1] < off[0] || off[1] > data_size || off[1] - off[0] != nbytes)
            throw CheckpointError(path + ": tensor '" + name + "' has data_offsets outside the data or not matching its shape");
        std::memcpy(t.data_ptr(), bytes.data() + 8 + hlen + off[0], nbytes);
        out[name] = t;
    }
    return out;
}

}  // namespace

std::pair<uint64_t, uint32_t> write_safetensors_checked(const std::string & path, const TensorMap & tensors,
                                                        const std::map<std::string, std::string> & metadata) {
    nlohmann::ordered_json header = nlohmann::ordered_json::object();
    if (!metadata.empty()) header["__metadata__"] = metadata;
    uint64_t offset = 0;
    for (const auto & [name, t] : tensors) {
        const char * dt = safetensors_dtype(t.scalar_type());
        if (!dt) throw CheckpointError("cannot save tensor '" + name + "' of dtype " + std::string(c10::toString(t.scalar_type())) + " to " + path);
        const uint64_t nbytes = static_cast<uint64_t>(t.numel()) * t.element_size();
        header[name] = {{"dtype", dt}, {"shape", t.sizes().vec()}, {"data_offsets", {offset, offset + nbytes}}};
        offset += nbytes;
    }
    std::string h = header.dump();
    h.resize((h.size() + 7) / 8 * 8, ' ');  // 8-byte aligned data buffer (safetensors recommendation)
    CheckedFile f(path);
    uint64_t hlen = h.size();
    unsigned char len_le[8];
    for (int i = 0; i < 8; ++i) len_le[i] = static_cast<unsigned char>(hlen >> (8 * i));
    f.write(len_le, 8);
    f.write(h);
    for (const auto & [name, t] : tensors) {
        torch::Tensor c = t.detach().to(torch::kCPU).contiguous();
        f.write(c.data_ptr(), static_cast<size_t>(c.numel()) * c.element_size());
    }
    f.close();
    return {f.size(), f.crc()};
}

// ---------------------------------------------------------------------------------------------------
// RNG state

TensorMap capture_rng_state() {
    TensorMap out;
    {
        auto gen = at::globalContext().defaultGenerator(c10::Device(c10::kCPU));
        std::lock_guard<std::mutex> lock(gen.mutex());
        out["cpu"] = gen.get_state().clone();
    }
    if (torch::cuda::is_available()) {
        for (int64_t i = 0; i < static_cast<int64_t>(torch::cuda::device_count()); ++i) {
            auto gen = at::globalContext().defaultGenerator(c10::Device(c10::kCUDA, static_cast<c10::DeviceIndex>(i)));
            std::lock_guard<std::mutex> lock(gen.mutex());
            out["cuda:" + std::to_string(i)] = gen.get_state().clone();
        }
    }
    return out;
}

TensorMap rng_state_of_rank(const TensorMap & rng, int rank) {
    const std::string prefix = "rank" + std::to_string(rank) + "/";
    TensorMap mine;
    bool per_rank = false;
    for (const auto & [key, state] : rng) {
        if (key.rfind("rank", 0) == 0 && key.find('/') != std::string::npos) {
            per_rank = true;
            if (key.rfind(prefix, 0) == 0) mine[key.substr(prefix.size())] = state;
        }
    }
    if (!per_rank) {
        if (rank != 0) throw CheckpointError("checkpoint: the RNG state is a one-process run's; rank " + std::to_string(rank) + " has none");
        return rng;
    }
    if (mine.empty()) throw CheckpointError("checkpoint: no RNG state for rank " + std::to_string(rank));
    return mine;
}

void restore_rng_state(const TensorMap & rng) {
    for (const auto & [key, state] : rng) {
        if (key == "cpu") {
            auto gen = at::globalContext().defaultGenerator(c10::Device(c10::kCPU));
            std::lock_guard<std::mutex> lock(gen.mutex());
            gen.set_state(state);
        } else if (key.rfind("cuda:", 0) == 0) {
            const int64_t i = std::stoll(key.substr(5));
            if (!torch::cuda::is_available() || i >= static_cast<int64_t>(torch::cuda::device_count())) {
                spdlog::warn("checkpoint: RNG state for {} has no device here; CUDA sampling will not replay exactly", key);
                continue;
            }
            auto gen = at::globalContext().defaultGenerator(c10::Device(c10::kCUDA, static_cast<c10::DeviceIndex>(i)));
            std::lock_guard<std::mutex> lock(gen.mutex());
            gen.set_state(state);
        } else {
            throw CheckpointError("checkpoint: unknown RNG state entry '" + key + "'");
        }
    }
}

// ---------------------------------------------------------------------------------------------------
// Save / verify / load

std::vector<std::string> list_checkpoints(const std::string & output_dir) {
    std::vector<std::pair<int64_t, std::string>> found;
    std::error_code ec;
    if (!fs::is_directory(output_dir, ec)) return {};
    for (const auto & e : fs::directory_iterator(output_dir, ec)) {
        if (!e.is_directory()) continue;
        const int64_t step = step_of(e.path().filename().string());
        if (step >= 0) found.emplace_back(step, e.path().string());
    }
    std::sort(found.begin(), found.end());
    std::vector<std::string> out;
    for (auto & f : found) out.push_back(std::move(f.second));
    return out;
}

namespace {

// Temporary folders of saves that never finished (the process was killed, the machine lost power). One
// writer per output_dir (rank 0) means any *.tmp found before a save is dead; it is never a candidate
// for resume (list_checkpoints only takes renamed folders), so removing it only frees the space.
void remove_stale_temporaries(const std::string & output_dir) {
    std::error_code ec;
    if (!fs::is_directory(output_dir, ec)) return;
    static const std::regex kTmp(R"(^(checkpoint-\d+\.tmp|latest\.tmp)$)");
    std::vector<fs::path> stale;
    for (const auto & e : fs::directory_iterator(output_dir, ec))
        if (std::regex_match(e.path().filename().string(), kTmp)) stale.push_back(e.path());
    for (const auto & p : stale) {
        spdlog::warn("checkpoint: removing {} left by an interrupted save", p.string());
        fs::remove_all(p, ec);
        if (ec) spdlog::warn("checkpoint: could not remove {}: {}", p.string(), ec.message());
    }
}

// Test hook for the kill -9 test (tests/integration/test_train_dist.cpp): IDAMOE_TEST_PAUSE_IN_SAVE=STEP:PATH
// makes the save of checkpoint STEP stop after model.safetensors is in the temporary folder, create PATH,
// and wait there until the test SIGKILLs the process. Inert unless the variable is set.
void test_pause_in_save(int64_t step) {
    const char * spec = std::getenv("IDAMOE_TEST_PAUSE_IN_SAVE");
    if (spec == nullptr) return;
    const std::string s(spec);
    const auto colon = s.find(':');
    if (colon == std::string::npos || std::stoll(s.substr(0, colon)) != step) return;
    { std::ofstream(s.substr(colon + 1)) << step << "\n"; }
    for (;;) ::pause();
}

}  // namespace

std::string save_checkpoint(const std::string & output_dir, const CheckpointData & data, int64_t keep_last) {
    const std::string name = checkpoint_name(data.step);
    const fs::path final_dir = fs::path(output_dir) / name;
    const fs::path tmp_dir = fs::path(output_dir) / (name + ".tmp");
    const auto previous = list_checkpoints(output_dir);
    std::error_code ec;
    remove_stale_temporaries(output_dir);
    try {
        fs::create_directories(output_dir);
        fs::remove_all(tmp_dir, ec);
        fs::create_directories(tmp_dir);
        nlohmann::ordered_json files = nlohmann::ordered_json::object();
        auto record = [&](const std::string & file, std::pair<uint64_t, uint32_t> sc) {
            files[file] = {{"size", sc.first}, {"crc32", sc.second}};
        };
        record("model.safetensors", write_safetensors_checked((tmp_dir / "model.safetensors").string(), data.model));
        test_pause_in_save(data.step);
        record("optimizer.safetensors", write_safetensors_checked((tmp_dir / "optimizer.safetensors").string(), data.optimizer));
        record("rng.safetensors", write_safetensors_checked((tmp_dir / "rng.safetensors").string(), data.rng));
        nlohmann::json state = data.trainer_state;
        state["step"] = data.step;
        state["format_version"] = kCheckpointFormatVersion;
        record("trainer_state.json", write_text_file((tmp_dir / "trainer_state.json").string(), state.dump(2) + "\n"));
        record("config.yaml", write_text_file((tmp_dir / "config.yaml").string(), data.config_yaml));
        nlohmann::ordered_json manifest = {{"format_version", kCheckpointFormatVersion}, {"step", data.step}, {"files", files}};
        write_text_file((tmp_dir / "manifest.json").string(), manifest.dump(2) + "\n");
        fsync_dir(tmp_dir.string());
        if (fs::exists(final_dir)) fs::remove_all(final_dir);  // re-saving the same step (resume then stop)
        fs::rename(tmp_dir, final_dir);
        fsync_dir(output_dir);
        const std::string latest_tmp = (fs::path(output_dir) / "latest.tmp").string();
        write_text_file(latest_tmp, name + "\n");
        fs::rename(latest_tmp, fs::path(output_dir) / "latest");
        fsync_dir(output_dir);
    } catch (const std::exception & e) {
        fs::remove_all(tmp_dir, ec);
        fs::remove(fs::path(output_dir) / "latest.tmp", ec);
        std::string msg = "saving checkpoint for step " + std::to_string(data.step) + " failed: " + e.what() + ". ";
        if (!previous.empty()) msg += "The previous checkpoint " + previous.back() + " is still valid (and `latest` names it).";
        else msg += "There is no earlier checkpoint in " + output_dir + ".";
        throw CheckpointWriteError(msg);
    }
    if (keep_last > 0) {
        auto all = list_checkpoints(output_dir);
        for (size_t i = 0; i + static_cast<size_t>(keep_last) < all.size(); ++i) {
            if (all[i] == final_dir.string()) continue;
            fs::remove_all(all[i], ec);
            if (ec) spdlog::warn("checkpoint: could not delete old {}: {}", all[i], ec.message());
        }
    }
    return final_dir.string();
}

std::string verify_checkpoint(const std::string & dir) {
    const fs::path manifest_path = fs::path(dir) / "manifest.json";
    if (!fs::is_directory(dir)) return "not a folder";
    if (!fs::exists(manifest_path)) return "manifest.json is missing (the save did not complete)";
    nlohmann::json manifest;
    try {
        manifest = nlohmann::json::parse(read_all(manifest_path.string()));
    } catch (const std::exception & e) {
        return std::string("manifest.json is unreadable: ") + e.what();
    }
    const int version = manifest.value("format_version", -1);
    if (version != kCheckpointFormatVersion)
        return "format_version " + std::to_string(version) + " is not supported (this build reads " +
               std::to_string(kCheckpointFormatVersion) + ")";
    if (!manifest.contains("files") || !manifest["files"].is_object()) return "manifest.json has no files table";
    std::vector<char> buf(size_t{1} << 22);
    for (const auto & [file, info] : manifest["files"].items()) {
        const fs::path p = fs::path(dir) / file;
        std::error_code ec;
        const auto size = fs::file_size(p, ec);
        if (ec) return file + " is missing";
        const uint64_t want_size = info.at("size").get<uint64_t>();
        if (size != want_size)
            return file + " has " + std::to_string(size) + " bytes, the manifest says " + std::to_string(want_size) + " (truncated?)";
        std::ifstream in(p, std::ios::binary);
        uint32_t c = 0;
        while (in) {
            in.read(buf.data(), static_cast<std::streamsize>(buf.size()));
            c = crc32(buf.data(), static_cast<size_t>(in.gcount()), c);
        }
        const uint32_t want_crc = info.at("crc32").get<uint32_t>();
        if (c != want_crc) return file + " fails its CRC-32 check (corrupt)";
    }
    return "";
}

CheckpointData load_checkpoint(const std::string & dir) {
    const std::string problem = verify_checkpoint(dir);
    if (!problem.empty()) throw CheckpointError("checkpoint " + dir + " is not valid: " + problem);
    CheckpointData d;
    try {
        d.model = read_safetensors_owned((fs::path(dir) / "model.safetensors").string());
        d.optimizer = read_safetensors_owned((fs::path(dir) / "optimizer.safetensors").string());
        d.rng = read_safetensors_owned((fs::path(dir) / "rng.safetensors").string());
        d.trainer_state = nlohmann::json::parse(read_all((fs::path(dir) / "trainer_state.json").string()));
        d.config_yaml = read_all((fs::path(dir) / "config.yaml").string());
    } catch (const CheckpointError &) {
        throw;
    } catch (const std::exception & e) {
        throw CheckpointError("checkpoint " + dir + ": " + e.what());
    }
    d.step = d.trainer_state.value("step", int64_t{0});
    return d;
}

std::string resolve_resume(const std::string & output_dir, const std::string & spec) {
    if (spec != "auto") {
        const std::string problem = verify_checkpoint(spec);
        if (!problem.empty()) throw CheckpointError("--resume " + spec + ": " + problem);
        return spec;
    }
    // Newest first. `latest` is written after the rename, so a crash in between leaves a complete newer
    // folder that `latest` does not name yet; every complete folder is therefore a candidate.
    auto all = list_checkpoints(output_dir);
    std::vector<std::string> candidates(all.rbegin(), all.rend());
    for (const auto & c : candidates) {
        const std::string problem = verify_checkpoint(c);
        if (problem.empty()) return c;
        spdlog::warn("resume: checkpoint {} is not usable ({}); trying the previous one", c, problem);
    }
    return "";
}

}  // namespace idamoe::io
