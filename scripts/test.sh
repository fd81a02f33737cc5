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
