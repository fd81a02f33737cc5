#!/usr/bin/env bash
# The sanitizer part of the test suite: builds everything with clang + ASan + UBSan (+ libFuzzer
# instrumentation) in build-fuzz/, runs the whole Catch2 suite there, then runs every fuzz target for
# FUZZ_SECONDS (default 30) on its committed seed corpus. Any sanitizer report fails the run.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD="${FUZZ_BUILD_DIR:-$ROOT/build-fuzz}"
if [ ! -f "$BUILD/CMakeCache.txt" ]; then
  # -O1 -g1: ASan's recommended optimisation level, line tables only for symbolised reports; about
  # half the compile time of RelWithDebInfo's -O2 -g on the 2-core CI machine.
  CC=clang CXX=clang++ cmake -S "$ROOT" -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -g1 -DNDEBUG" -DIDAMOE_FUZZ=ON
fi
cmake --build "$BUILD" -j "${JOBS:-$(nproc)}"
# The leak suppressions go to LSan only: ASan's own suppressions= takes interceptor/function rules and
# aborts on "leak:" lines ("failed to parse suppressions").
export ASAN_OPTIONS="detect_leaks=1:abort_on_error=1:${ASAN_OPTIONS:-}"
export LSAN_OPTIONS="suppressions=$ROOT/tests/fuzz/lsan.supp:${LSAN_OPTIONS:-}"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
# Left out here, still run by the normal suite: the SentencePiece tests (libsentencepiece must be loaded
# with RTLD_DEEPBIND, which the ASan runtime refuses: google/sanitizers#611) and the GMM balance
# statistics test (65 s normally, over 17 min under ASan; its code is covered by the smaller MoE tests).
ASAN_EXCLUDE='SentencePiece|tokenizer\.model|GMM routing stays balanced'
echo "== unit tests under ASan + UBSan (all but: $ASAN_EXCLUDE)"
(cd "$BUILD" && ctest --output-on-failure --timeout 1800 -j2 -E "${ASAN_CTEST_EXCLUDE:-$ASAN_EXCLUDE}")
echo "== fuzz targets, ${FUZZ_SECONDS:-30} s each"
FUZZ_BUILD_DIR="$BUILD" bash "$ROOT/scripts/fuzz.sh" "${FUZZ_SECONDS:-30}"
