// defines: fuzz_temp_path, write_bytes — helpers shared by the libFuzzer targets
//
// Most parsers under test take a path (they mmap or stream files), so each input is written to one
// per-process temporary file first. Every target catches std::exception: a clean error is the
// expected outcome for garbage; a crash, leak, hang or sanitizer report is the bug.
#pragma once

#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <string>

namespace idamoe::fuzz {

inline std::string fuzz_temp_dir() {
    static const std::string dir = [] {
        auto d = std::filesystem::temp_directory_path() / ("idamoe_fuzz_" + std::to_string(::getpid()));
        std::filesystem::create_directories(d);
        return d.string();
    }();
    return dir;
}

inline std::string write_bytes(const std::string & name, const uint8_t * data, size_t size) {
    std::string path = fuzz_temp_dir() + "/" + name;
    FILE * f = std::fopen(path.c_str(), "wb");
    if (!f) return path;
    if (size) std::fwrite(data, 1, size, f);
    std::fclose(f);
    return path;
}

}  // namespace idamoe::fuzz
