// defines: tune_cpu_runtime, prefer_passive_openmp, keep_freed_memory, set_compute_threads
//
// CPU run-time settings that LibTorch's defaults get wrong for training on a small machine (measured on the
// 2-core development machine, see README "Throughput"):
// - ATen's elementwise kernels run on libgomp's OpenMP pool and its GEMMs on OpenBLAS's own pthread pool
//   (Debian: libopenblas0-pthread). libgomp's idle workers spin after every parallel region and steal the
//   cores OpenBLAS's threads need for the next GEMM: a Linear + SiLU pair ran 3-5x slower than with
//   OMP_WAIT_POLICY=PASSIVE. The policy is read once when libgomp loads, before main, hence a re-exec.
// - glibc serves large blocks (>= 128 KiB, adaptively up to 32 MiB) with fresh mmaps and unmaps them on
//   free, so every step page-faults (and the kernel zeroes) its activations again: ~1/4 of the bench's
//   CPU time was system time. Keeping freed memory in the heap removes that; peak RSS is unchanged
//   because the next step reuses the same blocks.
#pragma once

namespace idamoe::core {

// Both of the below; call first thing in main.
void tune_cpu_runtime(char ** argv);

// If OMP_WAIT_POLICY is unset: set it to PASSIVE and re-exec this binary with the same arguments (same
// pid, so mpirun/torchrun do not notice). A user's explicit value is kept; if exec fails, nothing changes.
void prefer_passive_openmp(char ** argv);

// mallopt: no mmap-backed blocks, no trimming of the heap top (unless MALLOC_MMAP_MAX_ or
// MALLOC_TRIM_THRESHOLD_ is set, which then wins).
void keep_freed_memory();

// n > 0: n intra-op threads for ATen *and* for OpenBLAS (which at::set_num_threads does not reach);
// OpenBLAS is found at run time, so other BLAS builds are left alone.
void set_compute_threads(int n);

}  // namespace idamoe::core
