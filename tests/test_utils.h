// defines: fixture_path, TempDir, write_text, read_file — shared helpers for the Catch2 suite
#pragma once

#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <string>

namespace idamoe::test {

inline std::string fixture_path(const std::string & rel) { return std::string(IDAMOE_TEST_FIXTURES) + "/" + rel; }
inline std::string binary_path(const std::string & name) { return std::string(IDAMOE_BINARY_DIR) + "/" + name; }

// A fresh directory under the system temp dir, removed when the test ends.
struct TempDir {
    std::filesystem::path path;
    TempDir() {
        std::random_device rd;
        path = std::filesystem::temp_directory_path() / ("idamoe_test_" + std::to_string(rd()) + std::to_string(rd()));
        std::filesystem::create_directories(path);
    }
    ~TempDir() {
        std::error_code ec;
        std::filesystem::remove_all(path, ec);
    }
    std::string str(const std::string & rel = "") const { return rel.empty() ? path.string() : (path / rel).string(); }
};

// The whole file as bytes ("" when it cannot be read).
inline std::string read_file(const std::string & path) {
    std::ifstream in(path, std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
}

inline void write_text(const std::string & file, const std::string & text) {
    std::filesystem::create_directories(std::filesystem::path(file).parent_path());
    std::ofstream out(file, std::ios::binary);
    out << text;
}

}  // namespace idamoe::test
