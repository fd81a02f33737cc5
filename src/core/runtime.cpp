// defines: tune_cpu_runtime, prefer_passive_openmp, keep_freed_memory, set_compute_threads
#include "core/runtime.h"

#include <torch/torch.h>

#include <dlfcn.h>
#include <malloc.h>
#include <unistd.h>

#include <climits>
#include <cstdlib>

namespace idamoe::core {

void tune_cpu_runtime(char ** argv) {
    prefer_passive_openmp(argv);
    keep_freed_memory();
}

void prefer_passive_openmp(char ** argv) {
    if (std::getenv("OMP_WAIT_POLICY") != nullptr) return;
    if (setenv("OMP_WAIT_POLICY", "PASSIVE", 1) != 0) return;
    execv("/proc/self/exe", argv);
    // exec failed (no /proc?): carry on with libgomp's defaults; the variable only matters to children now
}

void keep_freed_memory() {
#ifdef __GLIBC__
    if (std::getenv("MALLOC_MMAP_MAX_") == nullptr) mallopt(M_MMAP_MAX, 0);
    if (std::getenv("MALLOC_TRIM_THRESHOLD_") == nullptr) mallopt(M_TRIM_THRESHOLD, INT_MAX);
#endif
}

void set_compute_threads(int n) {
    if (n <= 0) return;
    torch::set_num_threads(n);
    using SetThreads = void (*)(int);
    if (auto * f = reinterpret_cast<SetThreads>(dlsym(RTLD_DEFAULT, "openblas_set_num_threads"))) f(n);
}

}  // namespace idamoe::core
