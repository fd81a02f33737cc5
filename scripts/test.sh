#!/usr/bin/env bash
# Sets up (Debian packages), builds, and runs the whole test suite through CTest.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup.sh"
bash "$ROOT/scripts/build.sh"
cd "${BUILD_DIR:-$ROOT/build}"
# Tests use the two cores themselves; keep LibTorch from oversubscribing inside each test.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
ctest --output-on-failure --timeout 1200 -j2 "$@"
# Then the sanitizer part: clang ASan + UBSan build in build-fuzz/, the unit tests under it and every
# fuzz target for FUZZ_SECONDS (scripts/sanitize.sh). IDAMOE_SANITIZE=0 skips it for quick local runs.
if [ "${IDAMOE_SANITIZE:-1}" != 0 ]; then
  bash "$ROOT/scripts/sanitize.sh"
fi
