#!/usr/bin/env bash
# Sets up, builds and runs the main job. Usage: scripts/demo.sh [OUT_DIR]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT_DIR="${1:-$ROOT/runs/demo}"
mkdir -p "$OUT_DIR"
OUT_DIR="$(cd "$OUT_DIR" && pwd)"
bash "$ROOT/scripts/setup.sh"
bash "$ROOT/scripts/build.sh"
BIN="${BUILD_DIR:-$ROOT/build}/idamoe-train"
export IDAMOE_OUT="$OUT_DIR/smoke"
echo "== resolved config (configs/smoke.yaml)"
"$BIN" --config "$ROOT/configs/smoke.yaml" --print-config | tee "$OUT_DIR/resolved_config.yaml"
echo "== dry run: config and every input it names"
"$BIN" --config "$ROOT/configs/smoke.yaml" --dry-run
