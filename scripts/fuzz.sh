#!/usr/bin/env bash
# Builds the libFuzzer targets (clang, ASan + UBSan + libFuzzer) and runs each for SECONDS.
# Usage: scripts/fuzz.sh [SECONDS=30] [TARGET...]
# New interesting inputs go to $FUZZ_WORK (default build-fuzz/corpus-work/TARGET); the committed seed
# corpus in tests/fuzz/corpus/TARGET is only read. A crash leaves crash-* files in $FUZZ_WORK and fails.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SECONDS_PER="${1:-30}"; shift || true
BUILD="${FUZZ_BUILD_DIR:-$ROOT/build-fuzz}"
TARGETS=("$@")
if [ ${#TARGETS[@]} -eq 0 ]; then
  TARGETS=(fuzz_safetensors fuzz_safetensors_index fuzz_model_config fuzz_yaml_config fuzz_llava_dataset fuzz_bpe_tokenizer fuzz_image)
fi
if [ ! -f "$BUILD/CMakeCache.txt" ]; then
  # -O1 -g1: ASan's recommended optimisation level, line tables only for symbolised reports; about
  # half the compile time of RelWithDebInfo's -O2 -g on the 2-core CI machine.
  CC=clang CXX=clang++ cmake -S "$ROOT" -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -g1 -DNDEBUG" -DIDAMOE_FUZZ=ON
fi
present=()
for t in "${TARGETS[@]}"; do [ -f "$ROOT/tests/fuzz/$t.cpp" ] && present+=("$t"); done
cmake --build "$BUILD" -j "${JOBS:-$(nproc)}" --target "${present[@]}"
export ASAN_OPTIONS="detect_leaks=1:abort_on_error=1:${ASAN_OPTIONS:-}"
export LSAN_OPTIONS="suppressions=$ROOT/tests/fuzz/lsan.supp:${LSAN_OPTIONS:-}"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
export OMP_NUM_THREADS=1
fail=0
for t in "${present[@]}"; do
  work="${FUZZ_WORK:-$BUILD/corpus-work}/$t"
  mkdir -p "$work"
  echo "== $t: ${SECONDS_PER}s"
  if ! (cd "$work" && "$BUILD/$t" -max_total_time="$SECONDS_PER" -timeout=20 -rss_limit_mb=4096 -max_len=65536 \
          -print_final_stats=1 "$work" "$ROOT/tests/fuzz/corpus/$t" 2>&1 | tail -n 25); then
    echo "FUZZ FAILURE: $t (reproducers in $work)"; fail=1
  fi
  if ls "$work"/crash-* "$work"/leak-* "$work"/timeout-* >/dev/null 2>&1; then
    echo "FUZZ FAILURE: $t left reproducers in $work"; fail=1
  fi
done
exit $fail
