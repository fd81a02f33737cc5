#!/usr/bin/env bash
# Configures and builds idamoe into BUILD_DIR (default: build/). Extra args go to cmake.
# BUILD_TARGETS="a b" builds only those targets (the demo skips the test binary: ~1/3 of the build).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD_DIR="${BUILD_DIR:-$ROOT/build}"
JOBS="${JOBS:-$(nproc)}"
GEN=()
command -v ninja >/dev/null 2>&1 && GEN=(-G Ninja)
if [ ! -f "$BUILD_DIR/CMakeCache.txt" ]; then
  cmake -S "$ROOT" -B "$BUILD_DIR" "${GEN[@]}" -DCMAKE_BUILD_TYPE="${BUILD_TYPE:-Release}" "$@"
fi
TARGET_ARGS=()
[ -n "${BUILD_TARGETS:-}" ] && read -r -a TARGETS <<< "$BUILD_TARGETS" && TARGET_ARGS=(--target "${TARGETS[@]}")
cmake --build "$BUILD_DIR" -j "$JOBS" "${TARGET_ARGS[@]}"
