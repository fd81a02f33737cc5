// defines: free_port, spawn_process, wait_process — running ranks as child processes in tests
//
// Multi-rank tests start fresh copies of idamoe_tests (posix_spawn = exec right away, never a fork of a
// process that already initialised torch) running a hidden worker test case, one per rank.
#pragma once

#include "test_utils.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <fcntl.h>
#include <fstream>
#include <map>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

extern char ** environ;

namespace idamoe::test {

// A TCP port the kernel just handed out (bind to port 0), for MASTER_PORT.
inline int free_port() {
    int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) throw std::runtime_error("free_port: socket() failed");
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = 0;
    socklen_t len = sizeof addr;
    if (::bind(fd, reinterpret_cast<sockaddr *>(&addr), sizeof addr) != 0 ||
        ::getsockname(fd, reinterpret_cast<sockaddr *>(&addr), &len) != 0) {
        ::close(fd);
        throw std::runtime_error("free_port: bind/getsockname failed");
    }
    ::close(fd);
    return ntohs(addr.sin_port);
}

// Spawns argv[0] (searched in PATH) with the parent's environment minus any launcher variables, plus
// `extra`; stdout and stderr go to log_path.
inline pid_t spawn_process(const std::vector<std::string> & argv, const std::map<std::string, std::string> & extra,
                           const std::string & log_path) {
    static const char * kLauncherVars[] = {"RANK=", "WORLD_SIZE=", "LOCAL_RANK=", "LOCAL_WORLD_SIZE=",
                                           "MASTER_ADDR=", "MASTER_PORT=", "OMPI_COMM_WORLD_", "PMI_",
                                           "MPI_LOCAL"};
    std::vector<std::string> env;
    for (char ** e = environ; *e != nullptr; ++e) {
        bool drop = false;
        for (const char * v : kLauncherVars) drop = drop || std::strncmp(*e, v, std::strlen(v)) == 0;
        if (!drop) env.emplace_back(*e);
    }
    for (const auto & [k, v] : extra) env.push_back(k + "=" + v);
    std::vector<char *> envp, args;
    for (auto & s : env) envp.push_back(s.data());
    envp.push_back(nullptr);
    std::vector<std::string> argv_copy = argv;
    for (auto & s : argv_copy) args.push_back(s.data());
    args.push_back(nullptr);

    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 1, log_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    posix_spawn_file_actions_adddup2(&fa, 1, 2);
    pid_t pid = 0;
    const int rc = posix_spawnp(&pid, args[0], &fa, nullptr, args.data(), envp.data());
    posix_spawn_file_actions_destroy(&fa);
    if (rc != 0) throw std::runtime_error("spawn_process: cannot start " + argv[0] + ": " + std::strerror(rc));
    return pid;
}

// Exit status of pid, or -1 after killing it (SIGKILL) when it outlives deadline_s.
inline int wait_process(pid_t pid, double deadline_s) {
    const auto t0 = std::chrono::steady_clock::now();
    for (;;) {
        int status = 0;
        const pid_t r = ::waitpid(pid, &status, WNOHANG);
        if (r == pid) return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
        if (r < 0) return -2;
        if (std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() > deadline_s) {
            ::kill(pid, SIGKILL);
            ::waitpid(pid, &status, 0);
            return -1;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
}

}  // namespace idamoe::test
